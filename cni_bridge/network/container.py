"""The container side: addresses, routes and sysctls of CNI_IFNAME inside its namespace."""

from __future__ import annotations

import socket

from ..errors import CHECK_FAILED, CniError
from ..result import IPConfig, Route
from . import sysctl
from .netlink import Link, Netlink

_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def configure(nl: Netlink, link: Link, ips: list[IPConfig], routes: list[Route], *, enable_dad: bool) -> None:
    """Called with the thread inside the container namespace (sysctls are per namespace)."""
    families = {ip.family for ip in ips}
    if 6 in families:
        for name in ("lo", link.name):
            sysctl.ensure(("net/ipv6/conf/{}/disable_ipv6", name), 0)
        # Keep addresses when a runtime or user takes the link down and up again.
        sysctl.ensure(("net/ipv6/conf/{}/keep_addr_on_down", link.name), 1)
        sysctl.ensure(("net/ipv6/conf/{}/accept_dad", link.name), 1 if enable_dad else 0)
        if enable_dad:
            sysctl.ensure(("net/ipv6/conf/{}/enhanced_dad", link.name), 1)
    if 4 in families:
        # Announce the new address at once, so neighbours drop stale ARP entries of a previous owner.
        sysctl.ensure(("net/ipv4/conf/{}/arp_notify", link.name), 1)
    for ip in ips:
        nl.add_address(link.index, ip.ip, ip.prefixlen, nodad=not enable_dad)
    nl.set_link(link.index, up=True)
    gateways = {ip.family: ip.gateway for ip in reversed(ips) if ip.gateway}
    for route in routes:
        gw = route.gw or gateways.get(route.family, "")
        dst, _, length = route.dst.partition("/")
        is_default = int(length) == 0
        nl.add_route(None if is_default else dst, int(length), gateway=gw or None, oif=link.index,
                     family=_AF[route.family], table=route.table, scope=route.scope,
                     priority=route.priority or None, mtu=route.mtu or None, advmss=route.advmss or None)


def check(nl: Netlink, link: Link, ips: list[IPConfig], routes: list[Route]) -> None:
    """CHECK inside the container: every address of the result, every route (later plugins may add more)."""
    present = {(a.address, a.prefixlen) for a in nl.addresses(link.index)}
    for ip in ips:
        if (ip.ip, ip.prefixlen) not in present:
            raise CniError(CHECK_FAILED, f"address {ip.address} is missing on {link.name} in the container",
                           f"present: {sorted(f'{a}/{p}' for a, p in present) or 'none'}")
    gateways = {ip.family: ip.gateway for ip in reversed(ips) if ip.gateway}
    for family in {r.family for r in routes}:
        table = [(r.dst, r.dst_len, r.gateway) for r in nl.routes(_AF[family]) if r.oif == link.index]
        for route in (r for r in routes if r.family == family):
            dst, _, length = route.dst.partition("/")
            want_dst = "" if int(length) == 0 else dst
            gw = route.gw or gateways.get(family, "")
            if not any(d == want_dst and n == int(length) and (not gw or g == gw) for d, n, g in table):
                raise CniError(CHECK_FAILED, f"route to {route.dst}{' via ' + gw if gw else ''} is missing "
                               f"on {link.name} in the container")
