"""The host side: the bridge, its gateway addresses, the host end of each veth, forwarding."""

from __future__ import annotations

import errno
import socket

from ..errors import BRIDGE_CONFLICT, CniError
from . import sysctl
from .naming import bridge_mac
from .netlink import Link, Netlink, NetlinkError

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
    sysctl.ensure_if_present(("net/ipv6/conf/{}/accept_ra", ifname), 0)


def ensure_bridge(nl: Netlink, name: str, *, mtu: int, vlan_filtering: bool, promisc: bool) -> Link:
    """The bridge is shared by every attachment of the network and is never taken away: a
    failed ADD that deleted the bridge it created would detach the ports that concurrent
    ADDs put on it meanwhile (the reference never deletes it either)."""
    link = nl.link(name)
    if link is None:
        try:
            nl.add_bridge(name, mtu=mtu, mac=bridge_mac(name), vlan_filtering=vlan_filtering)
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
    # While its link-local address is tentative (DAD, ~2 s) the kernel queues forwarded IPv6
    # packets instead of resolving neighbours: the first pod's first packets would wait. Its
    # MAC, and so its link-local address, is derived from its unique name.
    sysctl.ensure_if_present(("net/ipv6/conf/{}/accept_dad", name), 0)
    if not link.up or link.promisc != promisc:
        nl.set_link(link.index, up=True, promisc=promisc if link.promisc != promisc else None)
    return link


def _overlaps(a_ip: str, a_len: int, b_ip: str, b_len: int) -> bool:
    import ipaddress
    a = ipaddress.ip_network(f"{a_ip}/{a_len}", strict=False)
    b = ipaddress.ip_network(f"{b_ip}/{b_len}", strict=False)
    return a.version == b.version and a.overlaps(b)


def ensure_gateway_addresses(nl: Netlink, bridge: Link, gateways: list[tuple[str, int]], *, force: bool) -> None:
    """Put each gateway ip/prefixlen on the bridge; another address in its subnet is a conflict.

    Every family is checked before any address is added, so a conflict leaves the bridge as
    it was. The reference refuses any second IPv4 address; we refuse only one that overlaps a
    gateway's subnet, so one bridge can carry several IPv4 range sets. Like the bridge, a
    gateway is shared: a later failure of this ADD leaves it, since concurrent ADDs may
    already route through it.
    """
    present = nl.addresses(bridge.index)
    missing: list[tuple[str, int]] = []
    stale = []
    for ip, prefixlen in gateways:
        if any(a.address == ip and a.prefixlen == prefixlen for a in present):
            continue
        missing.append((ip, prefixlen))
        for existing in present:
            if _overlaps(existing.address, existing.prefixlen, ip, prefixlen):
                if not force:
                    raise CniError(BRIDGE_CONFLICT,
                                   f'bridge "{bridge.name}" already has an IP address different from {ip}/{prefixlen}',
                                   f"it has {existing.address}/{existing.prefixlen}; set forceAddress to replace it")
                stale.append(existing)
    for existing in stale:
        nl.del_address(bridge.index, existing.address, existing.prefixlen)
    for ip, prefixlen in missing:
        try:
            nl.add_address(bridge.index, ip, prefixlen, nodad=True)
        except NetlinkError as exc:
            if exc.errno != errno.EEXIST:  # a concurrent ADD put it there first
                raise


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
