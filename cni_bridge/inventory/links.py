"""Every link of the current network namespace: one RTM_GETLINK dump, read for three facts.

Why not pyroute2's ifinfmsg, which the plugin's netlink code uses: it turns each of a link's
sixty-odd attributes into an object, about 2 ms per link here, two seconds for a host of a
thousand veths; this view needs a link's index, name, master and IFF_UP and nothing else,
which a walk over the attribute headers finds. Importing nothing of pyroute2 also saves its
~40 ms start. The socket is of the namespace current when the dump runs (unlike /sys/class/net,
which shows the namespace sysfs was mounted in: wrong under `nsenter --net`).
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


def _dump_once(sock: socket.socket, seq: int) -> tuple[list[LinkFacts], bool]:
    sock.send(_HEADER.pack(_HEADER.size + _IFINFO.size, _RTM_GETLINK, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
              + _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
    links: list[LinkFacts] = []
    interrupted = False
    while True:
        data = sock.recv(_RECV_SIZE)
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, kind, flags, reply_seq, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size or offset + length > len(data):
                raise OSError(errno.EPROTO, "truncated netlink message")
            if reply_seq == seq:
                interrupted |= bool(flags & _NLM_F_DUMP_INTR)
                if kind == _NLMSG_DONE:
                    return links, interrupted
                if kind == _NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    raise OSError(-error, os.strerror(-error))
                if kind == _RTM_NEWLINK:
                    links.append(_facts(data, offset + _HEADER.size, offset + length))
            offset += (length + 3) & ~3


def dump() -> list[LinkFacts]:
    """Every link; OSError if the kernel refuses the dump."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        for seq in range(1, _ATTEMPTS + 1):
            links, interrupted = _dump_once(sock, seq)
            if not interrupted:
                break
        return links
