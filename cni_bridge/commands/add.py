"""ADD: IP addresses, bridge, veth, container addressing and routes; all of it or none of it."""

from __future__ import annotations

import errno
import ipaddress
import os

from .. import versions
from ..errors import INTERFACE_EXISTS, RESULT_CONVERSION, CniError
from ..ipam import ipam_for
from ..log import Log
from ..network import bridge as host_side
from ..network import container as container_side
from ..network.naming import host_veth_name
from ..network.netlink import Netlink, NetlinkError
from ..network.netns import inside, open_container_netns
from ..request import Request
from ..result import Interface, IPConfig, Result, Route, render_result
from ..undo import Rollback


def _default_routes(ips: list[IPConfig], routes: list[Route]) -> list[Route]:
    """isDefaultGateway: a default route per family with a gateway, unless IPAM already gives one."""
    added = []
    for family, dst in ((4, "0.0.0.0/0"), (6, "::/0")):
        gateway = next((ip.gateway for ip in ips if ip.family == family and ip.gateway), "")
        has_default = any(r.family == family and r.dst.endswith("/0") and r.gw for r in routes)
        if gateway and not has_default:
            added.append(Route(dst=dst, gw=gateway))
    return added


def _install_firewall(request: Request, ips: list[IPConfig], bridge: str, rollback: Rollback, log: Log) -> None:
    from ..firewall import driver_for, orchestrate, portmap
    from .rules import attachment_rules
    conf = request.conf
    undo = orchestrate.install(driver_for(conf), attachment_rules(request, ips), conf.state_dir)
    rollback.push("install firewall rules", undo)
    if conf.port_mappings and conf.snat and any(ip.family == 4 for ip in ips):
        portmap.allow_localhost_publishing(bridge)
    udp_ports = sorted({pm.host_port for pm in conf.port_mappings if pm.protocol == "udp"})
    if udp_ports:
        try:
            portmap.flush_udp_conntrack(udp_ports)
        except CniError as exc:  # stale entries only delay traffic; the attachment itself is fine
            log.warning(f"could not flush UDP conntrack entries for ports {udp_ports}: {exc}")


def _merge_previous(prev: Result | None, ours: Result) -> Result:
    """A chained ADD prints prevResult plus its own changes (spec: ADD, "prevResult")."""
    if prev is None:
        return ours
    offset = len(prev.interfaces)
    for ip in ours.ips:
        if ip.interface is not None:
            ip.interface += offset
    return Result(interfaces=prev.interfaces + ours.interfaces, ips=prev.ips + ours.ips,
                  routes=prev.routes + ours.routes, dns=ours.dns if not ours.dns.is_empty() else prev.dns)


def _refuse_interface_from_earlier_plugin(request: Request) -> None:
    """A plugin before us in the list already made CNI_IFNAME: say so instead of a bare "exists"."""
    prev, ifname = request.conf.prev_result, request.invocation.ifname
    if prev is not None and any(i.name == ifname and i.sandbox for i in prev.interfaces):
        raise CniError(INTERFACE_EXISTS, f'interface "{ifname}" was already created by a plugin before '
                       f"{request.conf.type} in the list (it is in prevResult)",
                       "cni-bridge creates the container interface itself: put it first in the list, or "
                       "before only plugins that add no interface of this name (loopback, for example)")


def run_add(request: Request, log: Log) -> Result:
    _refuse_interface_from_earlier_plugin(request)
    if versions.is_legacy(request.conf.cni_version) and request.conf.ipam is None:
        raise CniError(RESULT_CONVERSION, f"cannot convert result to CNI version {request.conf.cni_version}: "
                       "no valid IP addresses", "an L2-only network needs cniVersion 0.3.0 or later")
    netns_fd = open_container_netns(request.invocation.netns)
    rollback = Rollback(log)
    try:
        with Netlink() as host:
            try:
                return _add(request, log, host, netns_fd, rollback)
            except BaseException:
                rollback.run()
                raise
    finally:
        os.close(netns_fd)


def _add(request: Request, log: Log, host: Netlink, netns_fd: int, rollback: Rollback) -> Result:
    conf, inv = request.conf, request.invocation
    with inside(netns_fd):
        container = Netlink()  # stays bound to the container's namespace after we step out
    rollback.push("close container netlink socket", container.close)
    if container.link(inv.ifname) is not None:
        raise CniError(INTERFACE_EXISTS, f'interface "{inv.ifname}" already exists in the container',
                       f"netns {inv.netns}")

    ipam = ipam_for(request)
    ipam_result = Result()
    if ipam is not None:
        ipam_result = ipam.add()
        rollback.push("release IP addresses", ipam.delete)

    mtu = conf.mtu or host_side.detect_mtu(host)
    bridge = host_side.ensure_bridge(host, conf.bridge, mtu=mtu, vlan_filtering=conf.vlan != 0,
                                     promisc=conf.promisc)

    if conf.is_gateway:
        for ip in ipam_result.ips:
            if not ip.gateway:  # a delegated IPAM may name none: the reference takes the subnet's first address
                ip.gateway = str(ipaddress.ip_interface(ip.address).network.network_address + 1)
        gateways = [(ip.gateway, ip.prefixlen) for ip in ipam_result.ips]
        host_side.ensure_gateway_addresses(host, bridge, gateways, force=conf.force_address)
        host_side.enable_forwarding({ip.family for ip in ipam_result.ips})

    host_name = host_veth_name(conf.name, inv.container_id, inv.ifname)
    if host.link(host_name) is not None:
        log.warning(f"removing stale host veth {host_name} left by an earlier ADD of this attachment")
        host.del_link(host_name)
    try:
        host.add_veth(host_name, inv.ifname, netns_fd, mtu, request.mac or None)
    except NetlinkError as exc:
        if exc.errno == errno.EEXIST:
            raise CniError(INTERFACE_EXISTS, f'interface "{inv.ifname}" already exists in the container',
                           str(exc)) from None
        raise
    rollback.push(f"create veth {host_name}", lambda: host.del_link(host_name))
    host_link = host.link(host_name)
    container_link = container.link(inv.ifname)
    if host_link is None or container_link is None:
        raise CniError(INTERFACE_EXISTS, f"veth {host_name}/{inv.ifname} vanished after creation")
    # A container reaching its own published port through the host's address comes back on
    # its own port once DNAT is applied on the bridge path (br_netfilter, as on Docker or
    # Kubernetes hosts): only hairpin mode lets the frame out again, so publishing turns it on.
    hairpin = conf.hairpin or (bool(conf.port_mappings) and not conf.promisc)
    host_side.attach_port(host, host_link, bridge, hairpin=hairpin, isolated=conf.port_isolation,
                          vlan=conf.vlan)

    ips = [IPConfig(address=ip.address, gateway=ip.gateway, interface=2) for ip in ipam_result.ips]
    routes = list(ipam_result.routes)
    if conf.is_default_gateway:
        routes += _default_routes(ips, routes)
    with inside(netns_fd):
        container_side.configure(container, container_link, ips, routes, enable_dad=conf.enable_dad)

    if ips:
        _install_firewall(request, ips, bridge.name, rollback, log)

    bridge = host.link(conf.bridge) or bridge
    result = Result(
        interfaces=[Interface(name=bridge.name, mac=bridge.mac, mtu=bridge.mtu),
                    Interface(name=host_link.name, mac=host_link.mac, mtu=mtu),
                    Interface(name=inv.ifname, mac=container_link.mac, mtu=mtu, sandbox=inv.netns)],
        ips=ips, routes=routes, dns=conf.dns if conf.dns is not None else ipam_result.dns)
    result = _merge_previous(conf.prev_result, result)
    render_result(result, conf.cni_version)  # a result the runtime cannot read must not leave the attachment behind
    container.close()
    rollback.forget()
    log.info(f"attached {inv.ifname} ({', '.join(ip.address for ip in ips) or 'no IP'}) to {bridge.name} via {host_name}")
    return result
