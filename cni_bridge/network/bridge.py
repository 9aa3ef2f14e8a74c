"""The host side: the bridge, its gateway addresses, the host end of each veth, forwarding."""

from __future__ import annotations

import errno
import socket

from ..errors import BRIDGE_CONFLICT, CniError
from . import sysctl
from .naming import bridge_mac
from .netlink import Link, Netlink, NetlinkError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..undo import Rollback

DEFAULT_MTU = 1500


def detect_mtu(nl: Netlink) -> int:
    """The MTU of the link carrying the default route: what the bridge's traffic ends up on.

    The reference leaves the kernel default of 1500, which drops large packets on overlay
    or cloud uplinks with a smaller MTU.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        oif = nl.default_route_oif(family)
        if oif:
            link = nl.link_by_index(oif)
            if link is not None:
                return link.mtu
    return DEFAULT_MTU


def ignore_router_advertisements(ifname: str) -> None:
    key = ("net/ipv6/conf/{}/accept_ra", ifname)
    if sysctl.read(key) not in (None, "0"):  # None: IPv6 is disabled on this host
        sysctl.write(key, 0)


def ensure_bridge(nl: Netlink, name: str, *, mtu: int, vlan_filtering: bool, promisc: bool,
                  rollback: Rollback) -> Link:
    link = nl.link(name)
    if link is None:
        try:
            nl.add_bridge(name, mtu=mtu, mac=bridge_mac(name), vlan_filtering=vlan_filtering)
            rollback.push(f"create bridge {name}", lambda: nl.del_link(name))
        except NetlinkError as exc:
            if exc.errno != errno.EEXIST:  # another ADD won the race: use its bridge
                raise
        link = nl.link(name)
        if link is None:
            raise CniError(BRIDGE_CONFLICT, f'bridge "{name}" vanished right after it was created')
    if link.kind != "bridge":
        raise CniError(BRIDGE_CONFLICT, f'"{name}" already exists but is not a bridge',
                       f"it is a {link.kind or 'device'} link; choose another \"bridge\" name")
    # The bridge is a router's port, not a host uplink: it must not configure itself from RAs.
    ignore_router_advertisements(name)
    if not link.up or link.promisc != promisc:
        nl.set_link(link.index, up=True, promisc=promisc if link.promisc != promisc else None)
    return link


def _overlaps(a_ip: str, a_len: int, b_ip: str, b_len: int) -> bool:
    import ipaddress
    a = ipaddress.ip_network(f"{a_ip}/{a_len}", strict=False)
    b = ipaddress.ip_network(f"{b_ip}/{b_len}", strict=False)
    return a.version == b.version and a.overlaps(b)


def ensure_gateway_address(nl: Netlink, bridge: Link, ip: str, prefixlen: int, *, force: bool,
                           rollback: Rollback) -> None:
    """Put ip/prefixlen on the bridge; another address in the same subnet is a conflict.

    The reference refuses any second IPv4 address; we refuse only one that overlaps the
    gateway's subnet, so one bridge can carry several IPv4 range sets.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    for existing in nl.addresses(bridge.index, family):
        if existing.address == ip and existing.prefixlen == prefixlen:
            return
        if _overlaps(existing.address, existing.prefixlen, ip, prefixlen):
            if not force:
                raise CniError(BRIDGE_CONFLICT,
                               f'bridge "{bridge.name}" already has an IP address different from {ip}/{prefixlen}',
                               f"it has {existing.address}/{existing.prefixlen}; set forceAddress to replace it")
            nl.del_address(bridge.index, existing.address, existing.prefixlen)
    nl.add_address(bridge.index, ip, prefixlen, nodad=True)
    rollback.push(f"add {ip}/{prefixlen} to {bridge.name}",
                  lambda: nl.del_address(bridge.index, ip, prefixlen))


def enable_forwarding(families: set[int]) -> None:
    """Switched on when a family needs it, never switched off: other networks may rely on it."""
    if 4 in families:
        sysctl.ensure("net/ipv4/ip_forward", 1)
    if 6 in families:
        sysctl.ensure("net/ipv6/conf/all/forwarding", 1)


def attach_port(nl: Netlink, host: Link, bridge: Link, *, hairpin: bool, isolated: bool, vlan: int) -> None:
    ignore_router_advertisements(host.name)
    nl.set_link(host.index, master=bridge.index)
    if hairpin or isolated:
        nl.set_bridge_port(host.index, hairpin=hairpin or None, isolated=isolated or None)
    if vlan:
        nl.set_port_vlan(host.index, vlan)
    nl.set_link(host.index, up=True)
