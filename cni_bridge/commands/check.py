"""CHECK: what prevResult says this plugin made must still be there, as it was made."""

from __future__ import annotations

import os

from ..errors import CHECK_FAILED, INVALID_CONFIG, CniError
from ..ipam import ipam_for
from ..log import Log
from ..network import container as container_side
from ..network.naming import host_veth_name
from ..network.netlink import Netlink
from ..network.netns import inside, open_container_netns
from ..request import Request
from ..result import Interface


def _fail(msg: str, details: str = "") -> CniError:
    return CniError(CHECK_FAILED, msg, details)


def _expect_mac(iface: Interface | None, actual: str, what: str) -> None:
    if iface is not None and iface.mac and iface.mac.lower() != actual.lower():
        raise _fail(f"{what} has MAC {actual}, the result says {iface.mac}")


def run_check(request: Request, log: Log) -> None:
    conf, inv = request.conf, request.invocation
    prev = conf.prev_result
    if prev is None:
        raise CniError(INVALID_CONFIG, "prevResult: required for CHECK", "the runtime must pass the ADD result")
    by_name = {iface.name: iface for iface in prev.interfaces}
    ours = [ip for ip in prev.ips
            if ip.interface is None or (0 <= ip.interface < len(prev.interfaces)
                                        and prev.interfaces[ip.interface].name == inv.ifname)]
    netns_fd = open_container_netns(inv.netns)
    try:
        with Netlink() as host:
            bridge = host.link(conf.bridge)
            if bridge is None:
                raise _fail(f'bridge "{conf.bridge}" does not exist')
            if bridge.kind != "bridge":
                raise _fail(f'"{conf.bridge}" is not a bridge but a {bridge.kind or "device"} link')
            _expect_mac(by_name.get(conf.bridge), bridge.mac, f"bridge {conf.bridge}")
            if bridge.promisc != conf.promisc:
                raise _fail(f"bridge {conf.bridge} promiscuous mode is {'on' if bridge.promisc else 'off'}, "
                            f"promiscMode says {'on' if conf.promisc else 'off'}")
            host_name = host_veth_name(conf.name, inv.container_id, inv.ifname)
            host_link = host.link(host_name)
            if host_link is None:
                raise _fail(f"host veth {host_name} of {inv.ifname} does not exist")
            _expect_mac(by_name.get(host_name), host_link.mac, f"host veth {host_name}")
            if host_link.master != bridge.index:
                raise _fail(f"host veth {host_name} is not attached to bridge {conf.bridge}")
            if conf.is_gateway:
                present = {(a.address, a.prefixlen) for a in host.addresses(bridge.index)}
                for ip in ours:
                    if ip.gateway and (ip.gateway, ip.prefixlen) not in present:
                        raise _fail(f"gateway address {ip.gateway}/{ip.prefixlen} is missing on bridge {conf.bridge}")
            with inside(netns_fd):
                with Netlink() as container:
                    link = container.link(inv.ifname)
                    if link is None:
                        raise _fail(f"interface {inv.ifname} does not exist in the container", inv.netns)
                    if link.kind != "veth" or link.peer_index != host_link.index:
                        raise _fail(f"interface {inv.ifname} in the container is not the peer of {host_name}")
                    _expect_mac(by_name.get(inv.ifname), link.mac, f"container interface {inv.ifname}")
                    container_side.check(container, link, ours, prev.routes)
    finally:
        os.close(netns_fd)
    ipam = ipam_for(request)
    if ipam is not None:
        ipam.check(ours)
    if ours:
        from ..firewall import driver_for, orchestrate
        from ..firewall.driver import Identity
        from .rules import attachment_rules
        identity = Identity(conf.name, request.invocation.container_id, request.invocation.ifname)
        orchestrate.check(driver_for(conf, identity), attachment_rules(request, ours), conf.state_dir)
    log.debug("check passed")
