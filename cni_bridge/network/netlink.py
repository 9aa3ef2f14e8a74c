"""Route-family (rtnetlink) operations: links, veth pairs, bridge ports, addresses, routes.

Each operation builds a pyroute2 message and hands it to the generic netlink transport
(``cni_bridge.network.netlink_socket``), which frames it, waits for the answer and turns
a kernel errno into ``NetlinkError``; replies come back as the small records below.

``Netlink()`` is an rtnetlink socket in the network namespace current at construction
(see netlink_socket). Only ``cni_bridge.network`` code that really does netlink should
import this module, and lazily: importing it loads pyroute2's message layer.

Gotchas of pyroute2 0.9.7's route-family message classes that shape the code below
(the ones common to every family are in netlink_socket):

- The kernel checks ``NLA_F_NESTED`` on ``IFLA_PROTINFO``: without the flag it is read
  as the legacy one-byte port state.
- Several attribute classes are chosen from the enclosing message's ``family``
  (``IFLA_PROTINFO``, ``IFLA_AF_SPEC``, ``RTA_GATEWAY``...), so set ``family`` before
  adding attributes and before ``encode()``.
- ``IFLA_INFO_DATA``'s class is chosen from ``IFLA_INFO_KIND``, which must come first.
"""

from __future__ import annotations

import errno
import socket
import struct

from ..errors import LINK_FAILURE, CniError
from . import pyroute2_lean
from .netlink_socket import (
    NETLINK_ROUTE,
    NLA_F_NESTED,
    NLM_F_CREATE,
    NLM_F_EXCL,
    NetlinkError,
    NetlinkSocket,
)
from ..records import record

# typing costs ~2.6 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Address", "BridgePort", "Link", "Netlink", "NetlinkError", "Route", "link_from"]

# The rtnetlink message classes. Loaded by name through pyroute2_lean, which keeps
# pyroute2's heavy package __init__ from running (see there).
_ifinfmsg: Any = pyroute2_lean.load("netlink.rtnl.ifinfmsg").ifinfmsg
_ifaddrmsg: Any = pyroute2_lean.load("netlink.rtnl.ifaddrmsg").ifaddrmsg
_rtmsg: Any = pyroute2_lean.load("netlink.rtnl.rtmsg").rtmsg

# From the kernel's uapi headers (stable ABI), typed, unlike pyroute2's constants.
_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_RTM_GETLINK = 18
_RTM_SETLINK = 19
_RTM_NEWADDR = 20
_RTM_DELADDR = 21
_RTM_GETADDR = 22
_RTM_NEWROUTE = 24
_RTM_GETROUTE = 26

_IFF_UP = 0x1
_IFF_PROMISC = 0x100
_ARPHRD_ETHER = 1
_ARPHRD_LOOPBACK = 772

_AF_BRIDGE = 7
_BRIDGE_VLAN_INFO_PVID = 0x2
_BRIDGE_VLAN_INFO_UNTAGGED = 0x4
_DEFAULT_VLAN = 1

_IFA_F_NODAD = 0x02

_RT_TABLE_COMPAT = 252
_RT_TABLE_MAIN = 254
_RT_SCOPE_UNIVERSE = 0
_RT_SCOPE_LINK = 253
_RT_SCOPE_HOST = 254
_RTPROT_BOOT = 3
_RTN_UNICAST = 1
_RTM_F_CLONED = 0x200
_RTM_F_FIB_MATCH = 0x2000


@record(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: "bridge", "veth", "dummy"...; "" for none (lo, physical)
    mac: str  # "" when the link has no Ethernet address
    mtu: int
    master: int  # ifindex of the master (bridge), 0 if none
    up: bool  # administratively up (IFF_UP)
    operstate: str  # "UP", "DOWN", "LOWERLAYERDOWN", "UNKNOWN"...
    peer_index: int  # IFLA_LINK: a veth's peer ifindex (in the peer's netns), 0 if none
    link_netnsid: int  # IFLA_LINK_NETNSID: where the peer lives, -1 if same netns/none
    promisc: bool  # promiscuous mode requested by the user (IFF_PROMISC)


@record(frozen=True)
class BridgePort:
    """A bridge port as the bridge's own dump tells it (what `bridge link` shows)."""

    index: int
    name: str
    master: int  # the bridge's ifindex
    up: bool  # administratively up (IFF_UP)


@record(frozen=True)
class Address:
    index: int
    family: int
    address: str
    prefixlen: int
    flags: int  # IFA_F_*: NODAD, TENTATIVE, DADFAILED, PERMANENT...


@record(frozen=True)
class Route:
    family: int
    dst: str  # "" for the default route
    dst_len: int
    gateway: str  # "" when on-link
    oif: int
    table: int
    scope: int
    priority: int
    proto: int


def _family_of(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _check_ip(address: str, what: str) -> int:
    family = _family_of(address)
    try:
        socket.inet_pton(family, address)
    except OSError:
        raise CniError(LINK_FAILURE, f"failed to {what}: invalid IP address {address!r}") from None
    return family


def _ipv4_broadcast(address: str, prefixlen: int) -> str | None:
    # What "ip addr add" does: /31 and /32 have no broadcast address (RFC 3021).
    if prefixlen >= 31:
        return None
    (value,) = struct.unpack("!I", socket.inet_aton(address))
    return socket.inet_ntoa(struct.pack("!I", value | (0xFFFFFFFF >> prefixlen)))


def link_from(msg: Any) -> Link:
    """The link an ``RTM_NEWLINK`` message (a reply to ``RTM_GETLINK``) describes."""
    get = msg.get_attr
    info = get("IFLA_LINKINFO")
    kind = (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or ""
    mac = ""
    # IFLA_ADDRESS is decoded as a 6-byte MAC whatever its real length, so only
    # trust it for link types that have one (tunnels carry IPv4 addresses there).
    if msg["ifi_type"] in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK):
        mac = get("IFLA_ADDRESS") or ""
    netnsid = get("IFLA_LINK_NETNSID")
    flags = msg["flags"]
    return Link(
        index=msg["index"],
        name=get("IFLA_IFNAME") or "",
        kind=kind,
        mac=mac,
        mtu=get("IFLA_MTU") or 0,
        master=get("IFLA_MASTER") or 0,
        up=bool(flags & _IFF_UP),
        operstate=get("IFLA_OPERSTATE") or "UNKNOWN",
        peer_index=get("IFLA_LINK") or 0,
        link_netnsid=-1 if netnsid is None else netnsid,
        promisc=bool(flags & _IFF_PROMISC),
    )


def _address_from(msg: Any) -> Address:
    family = msg["family"]
    # For IPv4, IFA_ADDRESS is the peer on point-to-point links and IFA_LOCAL our
    # own address; IPv6 sends IFA_LOCAL only when there is a peer.
    if family == socket.AF_INET:
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    else:
        address = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
    flags = msg.get_attr("IFA_FLAGS")
    return Address(
        index=msg["index"],
        family=family,
        address=address or "",
        prefixlen=msg["prefixlen"],
        flags=msg["flags"] if flags is None else flags,
    )


def _route_from(msg: Any) -> Route:
    get = msg.get_attr
    oif = get("RTA_OIF") or 0
    gateway = get("RTA_GATEWAY") or ""
    if not oif:
        # A multipath route has no RTA_OIF; report its first hop, which is what
        # a caller looking for "the uplink" wants.
        hops = get("RTA_MULTIPATH")
        if hops:
            oif = hops[0]["oif"]
            gateway = hops[0].get_attr("RTA_GATEWAY") or gateway
    table = get("RTA_TABLE")
    return Route(
        family=msg["family"],
        dst=get("RTA_DST") or "",
        dst_len=msg["dst_len"],
        gateway=gateway,
        oif=oif,
        table=msg["table"] if table is None else table,
        scope=msg["scope"],
        priority=get("RTA_PRIORITY") or 0,
        proto=msg["proto"],
    )


class Netlink(NetlinkSocket):
    """An rtnetlink socket in the network namespace current at construction."""

    def __init__(self) -> None:
        super().__init__(NETLINK_ROUTE)
        # Every container adds a link, its addresses and routes to the host's namespace: dumps
        # must be filtered by the kernel, or their cost grows with the number of containers.
        self.check_strictly()

    # --- links ----------------------------------------------------------------

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None if there is none."""
        msg = _ifinfmsg()
        msg["attrs"] = [("IFLA_IFNAME", name)]
        return self._get_link(f'get link "{name}"', msg)

    def link_by_index(self, index: int) -> Link | None:
        """The link with ifindex ``index``, or None if there is none."""
        msg = _ifinfmsg()
        msg["index"] = index
        return self._get_link(f"get link #{index}", msg)

    def _get_link(self, what: str, msg: Any) -> Link | None:
        try:
            replies = self.request(what, msg, _RTM_GETLINK)
        except NetlinkError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return link_from(replies[0]) if replies else None

    def bridge_ports(self) -> list[BridgePort]:
        """Every port of every bridge in this namespace, from one AF_BRIDGE dump.

        The bridge answers with a few attributes per port (name, master, MTU, its port
        settings), where a full link dump carries ~40 per link (statistics, every IPv6
        setting) and would list the namespace's other links too. Only the name and the
        master are read: pyroute2 decodes an attribute on first ``get_attr``.
        """
        msg = _ifinfmsg()
        msg["family"] = _AF_BRIDGE
        return [
            BridgePort(
                index=reply["index"],
                name=reply.get_attr("IFLA_IFNAME") or "",
                master=reply.get_attr("IFLA_MASTER") or 0,
                up=bool(reply["flags"] & _IFF_UP),
            )
            for reply in self.dump("list bridge ports", msg, _RTM_GETLINK)
        ]

    def add_bridge(self, name: str, mtu: int | None, mac: str | None, vlan_filtering: bool) -> None:
        """Create a bridge; raises NetlinkError with errno EEXIST if the name is taken.

        ``vlan_filtering=False`` sends no VLAN attribute at all: kernels built without
        CONFIG_BRIDGE_VLAN_FILTERING (like the CI machines) refuse even a zero value
        with EOPNOTSUPP.
        """
        data = [("IFLA_BR_VLAN_FILTERING", 1)] if vlan_filtering else []
        attrs: list[Any] = [("IFLA_IFNAME", name)]
        if mtu is not None:
            attrs.append(("IFLA_MTU", mtu))
        if mac is not None:
            attrs.append(("IFLA_ADDRESS", mac))
        info: list[Any] = [("IFLA_INFO_KIND", "bridge")]
        if data:
            info.append(("IFLA_INFO_DATA", {"attrs": data}))
        attrs.append(("IFLA_LINKINFO", {"attrs": info}))
        msg = _ifinfmsg()
        msg["attrs"] = attrs
        self.request(f'create bridge "{name}"', msg, _RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)

    def add_veth(
        self,
        host_name: str,
        peer_name: str,
        peer_netns_fd: int,
        mtu: int | None,
        peer_mac: str | None,
    ) -> None:
        """Create a veth pair whose peer is born in the netns of ``peer_netns_fd``.

        Creating the peer in place (IFLA_NET_NS_FD in the peer's attributes) avoids
        moving it afterwards, which costs ~30 ms of RCU synchronisation in the kernel.
        A name taken on either side raises NetlinkError with errno EEXIST; the
        message names both ends because the kernel does not say which one clashed.
        """
        peer: list[Any] = [("IFLA_IFNAME", peer_name), ("IFLA_NET_NS_FD", peer_netns_fd)]
        attrs: list[Any] = [("IFLA_IFNAME", host_name)]
        if mtu is not None:
            attrs.append(("IFLA_MTU", mtu))
            peer.append(("IFLA_MTU", mtu))
        if peer_mac is not None:
            peer.append(("IFLA_ADDRESS", peer_mac))
        info = [
            ("IFLA_INFO_KIND", "veth"),
            ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]}),
        ]
        attrs.append(("IFLA_LINKINFO", {"attrs": info}))
        msg = _ifinfmsg()
        msg["attrs"] = attrs
        self.request(
            f'create veth "{host_name}" with peer "{peer_name}"',
            msg,
            _RTM_NEWLINK,
            NLM_F_CREATE | NLM_F_EXCL,
        )

    def set_link(
        self,
        index: int,
        *,
        up: bool | None = None,
        master: int | None = None,
        mtu: int | None = None,
        mac: str | None = None,
        promisc: bool | None = None,
    ) -> None:
        """Change several properties of a link in one request.

        ``master=0`` detaches the link from its master. The kernel applies MAC and MTU
        before the master and the up flag, so one call can prepare and plug a port.
        """
        flags = change = 0
        if up is not None:
            change |= _IFF_UP
            flags |= _IFF_UP if up else 0
        if promisc is not None:
            change |= _IFF_PROMISC
            flags |= _IFF_PROMISC if promisc else 0
        attrs: list[Any] = []
        if mac is not None:
            attrs.append(("IFLA_ADDRESS", mac))
        if mtu is not None:
            attrs.append(("IFLA_MTU", mtu))
        if master is not None:
            attrs.append(("IFLA_MASTER", master))
        if not change and not attrs:
            return
        msg = _ifinfmsg()
        msg["index"] = index
        msg["flags"] = flags
        msg["change"] = change
        msg["attrs"] = attrs
        self.request(f"set link #{index}", msg, _RTM_SETLINK)

    def del_link(self, index_or_name: int | str) -> bool:
        """Delete a link; False if it did not exist. Deleting one end of a veth deletes both."""
        msg = _ifinfmsg()
        if isinstance(index_or_name, int):
            msg["index"] = index_or_name
            what = f"delete link #{index_or_name}"
        else:
            msg["attrs"] = [("IFLA_IFNAME", index_or_name)]
            what = f'delete link "{index_or_name}"'
        try:
            self.request(what, msg, _RTM_DELLINK)
        except NetlinkError as e:
            if e.errno == errno.ENODEV:
                return False
            raise
        return True

    # --- bridge ports -----------------------------------------------------------

    def set_bridge_port(self, index: int, *, hairpin: bool | None, isolated: bool | None) -> None:
        """Set hairpin mode and port isolation of a bridge port (None: leave as is)."""
        attrs: list[Any] = []
        if hairpin is not None:
            attrs.append(("IFLA_BRPORT_MODE", int(hairpin)))
        if isolated is not None:
            attrs.append(("IFLA_BRPORT_ISOLATED", int(isolated)))
        if not attrs:
            return
        msg = _ifinfmsg()
        msg["family"] = _AF_BRIDGE
        msg["index"] = index
        # Without NLA_F_NESTED the bridge reads IFLA_PROTINFO as a bare port state.
        msg["attrs"] = [("IFLA_PROTINFO", {"attrs": attrs}, NLA_F_NESTED)]
        self.request(f"set bridge port options of link #{index}", msg, _RTM_SETLINK)

    def set_port_vlan(self, index: int, vid: int) -> None:
        """Make ``vid`` the port's PVID and untagged, and drop the default VLAN 1.

        Needs a kernel with CONFIG_BRIDGE_VLAN_FILTERING; otherwise NetlinkError with
        errno EOPNOTSUPP.
        """
        what = f"set VLAN {vid} on bridge port #{index}"
        if not 1 <= vid <= 4094:
            raise CniError(LINK_FAILURE, f"failed to {what}: VLAN id out of range 1-4094")
        info = {"flags": _BRIDGE_VLAN_INFO_PVID | _BRIDGE_VLAN_INFO_UNTAGGED, "vid": vid}
        self.request(what, self._vlan_msg(index, info), _RTM_SETLINK)
        if vid != _DEFAULT_VLAN:
            # On a port the kernel ignores deleting a VLAN it does not have, so this
            # is idempotent. It must be AF_BRIDGE: a plain RTM_DELLINK deletes the link.
            gone = {"flags": 0, "vid": _DEFAULT_VLAN}
            self.request(
                f"remove default VLAN from bridge port #{index}",
                self._vlan_msg(index, gone),
                _RTM_DELLINK,
            )

    @staticmethod
    def _vlan_msg(index: int, info: dict[str, int]) -> Any:
        msg = _ifinfmsg()
        msg["family"] = _AF_BRIDGE
        msg["index"] = index
        msg["attrs"] = [("IFLA_AF_SPEC", {"attrs": [("IFLA_BRIDGE_VLAN_INFO", info)]})]
        return msg

    # --- addresses ----------------------------------------------------------------

    def addresses(self, index: int | None = None, family: int | None = None) -> list[Address]:
        """Addresses, optionally of one link and/or one family (AF_INET, AF_INET6)."""
        msg = _ifaddrmsg()
        msg["family"] = family or socket.AF_UNSPEC
        msg["index"] = index or 0
        try:
            replies = self.dump("list addresses", msg, _RTM_GETADDR)
        except NetlinkError as e:
            if e.errno == errno.ENODEV:  # strict checking: no link with that index
                return []
            raise
        result = [_address_from(m) for m in replies]
        # A kernel without strict checking (before 4.20) ignores the index: filter here too.
        return [a for a in result if (index is None or a.index == index) and (family is None or a.family == family)]

    def add_address(self, index: int, address: str, prefixlen: int, *, nodad: bool = False) -> None:
        """Add ``address/prefixlen``; an existing one raises NetlinkError with errno EEXIST.

        IPv4 gets the broadcast address "ip addr add" would compute; ``nodad`` skips
        IPv6 duplicate address detection so the address is usable at once.
        """
        what = f"add address {address}/{prefixlen} to link #{index}"
        family = _check_ip(address, what)
        flags = _IFA_F_NODAD if nodad and family == socket.AF_INET6 else 0
        msg = _ifaddrmsg()
        msg["family"] = family
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["flags"] = flags
        scope = _RT_SCOPE_UNIVERSE
        attrs: list[Any] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        if family == socket.AF_INET:
            if address.startswith("127."):
                scope = _RT_SCOPE_HOST
            broadcast = _ipv4_broadcast(address, prefixlen)
            if broadcast is not None:
                attrs.append(("IFA_BROADCAST", broadcast))
        if flags:
            attrs.append(("IFA_FLAGS", flags))
        msg["scope"] = scope
        msg["attrs"] = attrs
        self.request(what, msg, _RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL)

    def del_address(self, index: int, address: str, prefixlen: int) -> bool:
        """Remove an address; False if the link or the address was not there."""
        what = f"delete address {address}/{prefixlen} from link #{index}"
        family = _check_ip(address, what)
        msg = _ifaddrmsg()
        msg["family"] = family
        msg["prefixlen"] = prefixlen
        msg["index"] = index
        msg["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address)]
        try:
            self.request(what, msg, _RTM_DELADDR)
        except NetlinkError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENODEV):
                return False
            raise
        return True

    # --- routes -------------------------------------------------------------------

    def routes(self, family: int, table: int = _RT_TABLE_MAIN) -> list[Route]:
        """Routes of one family in one table (main by default), without cache clones."""
        msg = _rtmsg()
        msg["family"] = family
        # With strict checking the kernel dumps that table only (a kernel without it ignores
        # the filter, and the loop below filters).
        msg["attrs"] = [("RTA_TABLE", table)]
        try:
            replies = self.dump("list routes", msg, _RTM_GETROUTE)
        except NetlinkError as e:
            if e.errno == errno.ENOENT:  # strict checking: no such table
                return []
            raise
        result = []
        for reply in replies:
            if reply["flags"] & _RTM_F_CLONED:
                continue
            route = _route_from(reply)
            if route.table == table and route.family == family:
                result.append(route)
        return result

    def add_route(
        self,
        dst: str | None,
        dst_len: int,
        *,
        gateway: str | None = None,
        oif: int | None = None,
        family: int,
        table: int | None = None,
        scope: int | None = None,
        priority: int | None = None,
        mtu: int | None = None,
        advmss: int | None = None,
    ) -> None:
        """Add a unicast route (``dst=None``: default route); EEXIST if it exists.

        ``table=None`` (or 0) is the main table; ids above 255 are fine.

        Without an explicit scope, an IPv4 route without gateway is link-scoped
        and every other route is universe-scoped, as with "ip route add".
        """
        target = f"{dst}/{dst_len}" if dst is not None else "default"
        what = f"add route {target}" + (f" via {gateway}" if gateway else "") + (f" dev #{oif}" if oif else "")
        for ip in (dst, gateway):
            if ip is not None and _check_ip(ip, what) != family:
                raise CniError(LINK_FAILURE, f"failed to {what}: {ip} is not of the route's family")
        if scope is None:
            scope = _RT_SCOPE_LINK if gateway is None and family == socket.AF_INET else _RT_SCOPE_UNIVERSE
        table_id = table or _RT_TABLE_MAIN  # 0 (RT_TABLE_UNSPEC) means main to the kernel too
        msg = _rtmsg()
        msg["family"] = family
        msg["dst_len"] = dst_len if dst is not None else 0
        # rtm_table is 8 bits wide; larger ids travel in RTA_TABLE only.
        msg["table"] = table_id if table_id < 256 else _RT_TABLE_COMPAT
        msg["proto"] = _RTPROT_BOOT
        msg["scope"] = scope
        msg["type"] = _RTN_UNICAST
        attrs: list[Any] = [("RTA_TABLE", table_id)]
        if dst is not None:
            attrs.append(("RTA_DST", dst))
        if gateway is not None:
            attrs.append(("RTA_GATEWAY", gateway))
        if oif is not None:
            attrs.append(("RTA_OIF", oif))
        if priority is not None:
            attrs.append(("RTA_PRIORITY", priority))
        metrics: list[Any] = []
        if mtu is not None:
            metrics.append(("RTAX_MTU", mtu))
        if advmss is not None:
            metrics.append(("RTAX_ADVMSS", advmss))
        if metrics:
            attrs.append(("RTA_METRICS", {"attrs": metrics}, NLA_F_NESTED))
        msg["attrs"] = attrs
        self.request(what, msg, _RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL)

    def default_route_oif(self, family: int) -> int | None:
        """The ifindex of the main table's preferred default route, None if there is none."""
        if family == socket.AF_INET6:
            found, oif = self._ipv6_default_route_oif()
            if found:
                return oif
        # The IPv4 main table holds a route per subnet, not per container: a dump stays small.
        defaults = [r for r in self.routes(family) if r.dst_len == 0 and r.oif]
        if not defaults:
            return None
        return min(defaults, key=lambda r: r.priority).oif

    def _ipv6_default_route_oif(self) -> tuple[bool, int | None]:
        """Ask the kernel which route "::" matches: (True, its oif) if it is the main table's
        default route, (True, None) if there is no route at all, (False, None) if this lookup
        cannot tell (another table or a more specific route answered: the caller dumps).

        Why not a dump: the IPv6 main table holds a link-local route for every veth on the
        host, 300 containers mean 300 routes to decode. A dump cannot be filtered by prefix
        length; a lookup of the all-zero address finds the default route, lowest metric
        first. IPv4 has no such lookup: the kernel answers any lookup of 0.0.0.0 with the
        loopback device.
        """
        msg = _rtmsg()
        msg["family"] = socket.AF_INET6
        msg["dst_len"] = 128
        msg["flags"] = _RTM_F_FIB_MATCH  # the matching route itself, not a resolved clone
        msg["attrs"] = [("RTA_DST", "::")]
        try:
            replies = self.request("look up the IPv6 default route", msg, _RTM_GETROUTE)
        except NetlinkError as e:
            if e.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return True, None
            return False, None
        route = _route_from(replies[0]) if replies else None
        if route is None or route.dst_len != 0 or route.table != _RT_TABLE_MAIN:
            return False, None
        return True, route.oif or None
