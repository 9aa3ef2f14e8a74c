"""Delete UDP conntrack entries by original destination port, over ctnetlink.

Why: a UDP flow to a host port that existed before the DNAT rule (a client retrying every
second) keeps its conntrack entry, and with it the old verdict, until it times out; the
reference portmap flushes these entries on ADD, and so do we.

pyroute2's conntrack message class (nfct_msg) encodes and decodes; our netlink transport
(cni_bridge.network.netlink_socket) carries it. Its module imports pyroute2's asyncio socket core
(~50 ms), a cost paid only by an ADD that publishes a UDP port. One dump filtered on UDP and
the destination port (CTA_FILTER, kernel >= 5.8; an older kernel refuses or ignores the
filter, so the port is checked here too), then one delete per entry, named by its original
tuple and zone.
"""

from __future__ import annotations

import errno
import socket

from ..errors import FIREWALL_FAILURE, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from ..network.netlink_socket import NetlinkSocket

_NFNL_SUBSYS_CTNETLINK = 1
_IPCTNL_MSG_CT_GET = 1
_IPCTNL_MSG_CT_DELETE = 2
_NLA_F_NESTED = 0x8000
# CTA_FILTER_ORIG_FLAGS bits (linux/netfilter/nfnetlink_conntrack.h)
_FILTER_PROTO_NUM = 1 << 3
_FILTER_PROTO_DST_PORT = 1 << 5

_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_IP_KEYS: dict[int, tuple[str, str]] = {socket.AF_INET: ("CTA_IP_V4_SRC", "CTA_IP_V4_DST"), socket.AF_INET6: ("CTA_IP_V6_SRC", "CTA_IP_V6_DST")}


def _message(nfct: Any, family: int, attrs: list[Any]) -> Any:
    msg = nfct.nfct_msg()
    msg["nfgen_family"] = family
    msg["attrs"] = attrs
    return msg


def _udp_tuple(port: int) -> Any:
    proto = {"attrs": [("CTA_PROTO_NUM", socket.IPPROTO_UDP), ("CTA_PROTO_DST_PORT", port)]}
    return ("CTA_TUPLE_ORIG", {"attrs": [("CTA_TUPLE_PROTO", proto, _NLA_F_NESTED)]}, _NLA_F_NESTED)


def _original_tuple(reply: Any, family: int, port: int) -> list[Any] | None:
    """The delete request's attributes naming this entry, or None if it is not ours to flush."""
    orig = reply.get_attr("CTA_TUPLE_ORIG")
    proto = orig.get_attr("CTA_TUPLE_PROTO") if orig is not None else None
    ip = orig.get_attr("CTA_TUPLE_IP") if orig is not None else None
    if proto is None or ip is None:
        return None
    if proto.get_attr("CTA_PROTO_NUM") != socket.IPPROTO_UDP or proto.get_attr("CTA_PROTO_DST_PORT") != port:
        return None
    src_key, dst_key = _IP_KEYS[family]
    tuple_attrs = [
        ("CTA_TUPLE_IP", {"attrs": [(src_key, ip.get_attr(src_key)), (dst_key, ip.get_attr(dst_key))]}, _NLA_F_NESTED),
        ("CTA_TUPLE_PROTO", {"attrs": [("CTA_PROTO_NUM", socket.IPPROTO_UDP),
                                       ("CTA_PROTO_SRC_PORT", proto.get_attr("CTA_PROTO_SRC_PORT")),
                                       ("CTA_PROTO_DST_PORT", port)]}, _NLA_F_NESTED),
    ]
    attrs: list[Any] = [("CTA_TUPLE_ORIG", {"attrs": tuple_attrs}, _NLA_F_NESTED)]
    zone = reply.get_attr("CTA_ZONE")
    if zone:
        attrs.append(("CTA_ZONE", zone))
    return attrs


def _entries(nl: NetlinkSocket, nfct: Any, family: int, port: int) -> list[list[Any]]:
    from ..network.netlink_socket import NetlinkError
    get = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_GET
    filtered = [_udp_tuple(port),
                ("CTA_FILTER", {"attrs": [("CTA_FILTER_ORIG_FLAGS", _FILTER_PROTO_NUM | _FILTER_PROTO_DST_PORT)]},
                 _NLA_F_NESTED)]
    try:
        replies = nl.dump("list conntrack entries", _message(nfct, family, filtered), get)
    except NetlinkError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        replies = nl.dump("list conntrack entries", _message(nfct, family, []), get)  # a kernel without CTA_FILTER
    found = (_original_tuple(reply, family, port) for reply in replies)
    return [attrs for attrs in found if attrs is not None]


def flush_udp(host_ports: Iterable[int]) -> int:
    """Delete UDP entries whose original destination port is one of host_ports; return how many."""
    ports = sorted(set(host_ports))
    if not ports:
        return 0
    from ..network import pyroute2_lean
    from ..network.netlink_socket import NETLINK_NETFILTER, NetlinkError, NetlinkSocket
    nfct = pyroute2_lean.load("netlink.nfnetlink.nfctsocket")
    delete = (_NFNL_SUBSYS_CTNETLINK << 8) | _IPCTNL_MSG_CT_DELETE
    deleted = 0
    try:
        with NetlinkSocket(NETLINK_NETFILTER) as nl:
            for af in _FAMILIES:
                for port in ports:
                    for attrs in _entries(nl, nfct, af, port):
                        try:
                            nl.request("delete a conntrack entry", _message(nfct, af, attrs), delete)
                            deleted += 1
                        except NetlinkError as exc:
                            if exc.errno != errno.ENOENT:  # gone meanwhile: fine
                                raise
    except NetlinkError as exc:
        raise CniError(FIREWALL_FAILURE, f"conntrack: {exc.msg}", exc.details) from None
    return deleted
