"""Delete UDP conntrack entries by original destination port, over ctnetlink.

Why: a UDP flow to a host port that existed before the DNAT rule (a client retrying
every second) keeps its conntrack entry, and with it the old verdict, until it times
out; the reference portmap flushes these entries on ADD, and so do we.

Why by hand rather than pyroute2: its conntrack message class lives in a module that
imports pyroute2's asyncio-based socket core (about 45 ms measured here, on every ADD
with a UDP port), and the `conntrack` CLI is an extra process per port and family and
a package the host may lack. The messages needed are small: a filtered dump
(IPCTNL_MSG_CT_GET with CTA_FILTER, kernel >= 5.8; older kernels ignore the filter and
we filter here) and one IPCTNL_MSG_CT_DELETE per entry, naming it by the original
tuple (and zone) copied verbatim from the dump.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ..errors import FIREWALL_FAILURE, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# Kernel uapi constants (linux/netlink.h, linux/netfilter/nfnetlink*.h); stable ABI.
_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_CTNETLINK = 1
_IPCTNL_MSG_CT_GET = 1
_IPCTNL_MSG_CT_DELETE = 2
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF

_CTA_TUPLE_ORIG = 1
_CTA_TUPLE_IP = 1
_CTA_TUPLE_PROTO = 2
_CTA_PROTO_NUM = 1
_CTA_PROTO_DST_PORT = 3
_CTA_ZONE = 18
_CTA_FILTER = 25
_CTA_FILTER_ORIG_FLAGS = 1
_FILTER_PROTO_NUM = 1 << 3
_FILTER_PROTO_DST_PORT = 1 << 5

_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id (big endian, 0 here)
_ATTR = struct.Struct("=HH")

_FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _attrs(data: bytes) -> list[tuple[int, bytes, bytes]]:
    """(type without flags, payload, the whole attribute as received) for each attribute."""
    out = []
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            break
        out.append((kind & _NLA_TYPE_MASK, data[offset + _ATTR.size:offset + length], data[offset:offset + length]))
        offset += (length + 3) & ~3
    return out


def _find(data: bytes, kind: int) -> bytes | None:
    for k, payload, _ in _attrs(data):
        if k == kind:
            return payload
    return None


class _Socket:
    def __init__(self) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_NETFILTER)
            self.sock.bind((0, 0))
        except OSError as exc:
            raise CniError(FIREWALL_FAILURE, f"failed to open a conntrack netlink socket: {exc.strerror}") from None
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, msg_type: int, flags: int, family: int, attrs: bytes) -> int:
        self.seq += 1
        body = _NFGEN.pack(family, 0, 0) + attrs
        kind = (_NFNL_SUBSYS_CTNETLINK << 8) | msg_type
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), kind, _NLM_F_REQUEST | flags, self.seq, 0) + body)
        return self.seq

    def replies(self, seq: int) -> Iterable[tuple[int, bytes]]:
        """(message type, payload) of each reply to `seq`, until DONE or the ACK/error.

        An error reply is yielded as (NLMSG_ERROR, errno as 4 bytes) and ends the stream.
        """
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, msg_seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    return
                payload = data[offset + _HEADER.size:offset + length]
                offset += (length + 3) & ~3
                if msg_seq != seq:
                    continue
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    yield kind, payload[:4]
                    return
                yield kind, payload


def _error_of(payload: bytes) -> int:
    return -struct.unpack("=i", payload)[0] if len(payload) >= 4 else 0


def _entries(sock: _Socket, family: int, port: int) -> list[bytes]:
    """The attributes that name each UDP entry with original destination port `port`."""
    proto = _attr(_CTA_PROTO_NUM, bytes([socket.IPPROTO_UDP])) + _attr(_CTA_PROTO_DST_PORT, struct.pack("!H", port))
    tuple_orig = _attr(_CTA_TUPLE_ORIG | _NLA_F_NESTED, _attr(_CTA_TUPLE_PROTO | _NLA_F_NESTED, proto))
    cta_filter = _attr(_CTA_FILTER | _NLA_F_NESTED,
                       _attr(_CTA_FILTER_ORIG_FLAGS, struct.pack("=I", _FILTER_PROTO_NUM | _FILTER_PROTO_DST_PORT)))
    found = []
    for attempt in (tuple_orig + cta_filter, b""):
        seq = sock.send(_IPCTNL_MSG_CT_GET, _NLM_F_DUMP, family, attempt)
        failed = 0
        for kind, payload in sock.replies(seq):
            if kind == _NLMSG_ERROR:
                failed = _error_of(payload)
                continue
            attrs = payload[_NFGEN.size:]
            orig = _find(attrs, _CTA_TUPLE_ORIG)
            proto_attrs = _find(orig, _CTA_TUPLE_PROTO) if orig is not None else None
            if proto_attrs is None:
                continue
            number = _find(proto_attrs, _CTA_PROTO_NUM)
            dport = _find(proto_attrs, _CTA_PROTO_DST_PORT)
            # Checked here too: a kernel without CTA_FILTER ignores it and dumps everything.
            if number != bytes([socket.IPPROTO_UDP]) or dport is None or struct.unpack("!H", dport[:2])[0] != port:
                continue
            found.append(b"".join(raw for k, _, raw in _attrs(attrs) if k in (_CTA_TUPLE_ORIG, _CTA_ZONE)))
        if failed in (errno.EINVAL, errno.EOPNOTSUPP) and attempt:
            found.clear()
            continue  # a kernel that refuses the filter: dump unfiltered
        if failed:
            raise CniError(FIREWALL_FAILURE, f"failed to list conntrack entries: {os.strerror(failed).lower()}")
        break
    return found


def flush_udp(host_ports: Iterable[int], families: Iterable[int] = (4, 6)) -> int:
    """Delete UDP entries whose original destination port is one of host_ports; return how many."""
    ports = sorted(set(host_ports))
    if not ports:
        return 0
    sock = _Socket()
    deleted = 0
    try:
        for family in families:
            af = _FAMILIES[family]
            for port in ports:
                for entry in _entries(sock, af, port):
                    seq = sock.send(_IPCTNL_MSG_CT_DELETE, _NLM_F_ACK, af, entry)
                    for kind, payload in sock.replies(seq):
                        if kind != _NLMSG_ERROR:
                            continue
                        err = _error_of(payload)
                        if err == 0:
                            deleted += 1
                        elif err != errno.ENOENT:  # gone meanwhile: fine
                            raise CniError(FIREWALL_FAILURE,
                                           f"failed to delete a conntrack entry: {os.strerror(err).lower()}")
    except OSError as exc:
        raise CniError(FIREWALL_FAILURE, f"conntrack netlink failed: {exc.strerror}") from None
    finally:
        sock.close()
    return deleted
