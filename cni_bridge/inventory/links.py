"""Host veths and their bridges, from one dump of bridge ports plus a lookup per exception.

A full link dump (RTM_GETLINK, AF_UNSPEC) makes the kernel write ~1.9 kB per link (statistics,
every IPv6 setting) and us walk ~40 attributes of each: ~200 ms for a thousand veths here, and
pyroute2's ifinfmsg, which the plugin's netlink code uses, took 4.7 s over the same dump by
turning every attribute into an object. The bridge ports' dump (AF_BRIDGE, what `bridge link`
shows) holds only ports, a few attributes each: name, master, flags. A host veth missing from
it is looked up by name on its own (detached, or gone), and each bridge by index for its name:
a handful of requests, on a host where few things are broken.

The messages are read by hand, for those few attributes; the socket is of the network namespace
current at the call (unlike /sys/class/net, which shows the namespace sysfs was mounted in:
the wrong one under `nsenter --net`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ..records import record

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWLINK, _RTM_GETLINK = 16, 18
_NLM_F_REQUEST, _NLM_F_DUMP, _NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
_AF_BRIDGE = 7
_IFLA_IFNAME, _IFLA_MASTER = 3, 10
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_IFF_UP = 0x1
_ATTEMPTS = 3  # a dump that raced with a link change is flagged; a retry gets a clean one
_RECV_SIZE = 1 << 18


@record(frozen=True)
class LinkFacts:
    index: int
    name: str
    master: int  # the master's ifindex (a bridge port's bridge), 0 if none
    up: bool


def _facts(data: bytes, start: int, end: int) -> LinkFacts:
    _, _, index, flags, _ = _IFINFO.unpack_from(data, start)
    name, master = "", 0
    offset = start + _IFINFO.size
    while offset + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        kind &= _NLA_TYPE_MASK
        if kind == _IFLA_IFNAME:
            name = data[offset + _ATTR.size:offset + length].rstrip(b"\0").decode(errors="replace")
        elif kind == _IFLA_MASTER and length >= _ATTR.size + 4:
            (master,) = struct.unpack_from("=I", data, offset + _ATTR.size)
        offset += (length + 3) & ~3
    return LinkFacts(index, name, master, bool(flags & _IFF_UP))


def _attribute(kind: int, value: bytes) -> bytes:
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, kind) + value + b"\0" * (-length % 4)


class RouteSocket:
    """An rtnetlink socket in the current network namespace, for link queries."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> RouteSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self._sock.close()

    def _exchange(self, flags: int, family: int, index: int, attrs: bytes) -> tuple[list[LinkFacts], bool]:
        self._seq += 1
        body = _IFINFO.pack(family, 0, index, 0, 0) + attrs
        self._sock.send(_HEADER.pack(_HEADER.size + len(body), _RTM_GETLINK, _NLM_F_REQUEST | flags, self._seq, 0)
                        + body)
        links: list[LinkFacts] = []
        interrupted = False
        while True:
            data = self._sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, reply_flags, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size or offset + length > len(data):
                    raise OSError(errno.EPROTO, "truncated netlink message")
                if seq == self._seq:
                    interrupted |= bool(reply_flags & _NLM_F_DUMP_INTR)
                    if kind == _NLMSG_DONE:
                        return links, interrupted
                    if kind == _NLMSG_ERROR:
                        (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                        if error:
                            raise OSError(-error, os.strerror(-error))
                        return links, interrupted
                    if kind == _RTM_NEWLINK:
                        links.append(_facts(data, offset + _HEADER.size, offset + length))
                        if not flags & _NLM_F_DUMP:
                            return links, interrupted
                offset += (length + 3) & ~3

    def bridge_ports(self) -> list[LinkFacts]:
        """Every port of every bridge (AF_BRIDGE dump); OSError if the kernel refuses."""
        for _ in range(_ATTEMPTS):
            links, interrupted = self._exchange(_NLM_F_DUMP, _AF_BRIDGE, 0, b"")
            if not interrupted:
                break
        return links

    def link(self, name: str = "", index: int = 0) -> LinkFacts | None:
        """One link by name or index; None if there is none."""
        try:
            links, _ = self._exchange(0, socket.AF_UNSPEC, index,
                                      _attribute(_IFLA_IFNAME, name.encode() + b"\0") if name else b"")
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise
        return links[0] if links else None
