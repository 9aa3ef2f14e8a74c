"""A netlink socket for any family: our own transport, pyroute2's message classes.

Why this split: pyroute2's socket classes cost 150-190 ms to import (asyncio, ssl,
multiprocessing...), while its message classes cost about 40 ms and already know
every attribute layout. So pyroute2 encodes and decodes every message, and this
module only frames them on a plain ``AF_NETLINK`` socket: stamp the sequence
number, send, collect replies until the ACK or ``NLMSG_DONE``, turn a negative
errno into an exception. It knows nothing of any family's messages: rtnetlink
(``cni_bridge.network.netlink``) and ctnetlink (``cni_bridge.firewall.conntrack``)
both build their pyroute2 messages and pass them to ``request`` or ``dump``.

The socket belongs to the network namespace that is current when it is
constructed. To talk to a container's namespace, construct it inside
``cni_bridge.network.netns.inside(fd)``; the socket stays bound to that namespace
after the thread switches back.

Import this module lazily: it loads pyroute2's message layer.

Gotchas of pyroute2 0.9.7's message classes, for every family:

- ``msg.encode()`` appends to ``msg.data``; encoding the same object twice produces
  garbage. We encode once and re-stamp only the sequence number on retries.
- A nested attribute needs ``NLA_F_NESTED`` in its type only when the kernel checks
  for it. pyroute2 takes extra NLA flags as a third tuple element:
  ``("CTA_TUPLE_ORIG", {...}, NLA_F_NESTED)``.
- ``nlmsgerr`` only declares the errno field, then parses attributes right after it,
  where the kernel puts the echoed request header. We enable ``NETLINK_CAP_ACK`` so
  that header is always exactly 16 bytes, and decode errors with a subclass that
  spells it out, so the extended-ACK message attribute decodes correctly.
- Decoding is lazy: ``decode()`` only slices the attribute chain; each attribute is
  decoded on first ``get_attr()``. Unused attributes (statistics) cost nothing.
- ``get_attr()`` returns ``None`` for an absent attribute and the decoded value
  otherwise; a nested attribute's value is the nested message itself.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ..errors import LINK_FAILURE, CniError
from . import pyroute2_lean

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Self

# Protocol numbers and flags from the kernel's uapi headers (stable ABI). Our own
# copies are typed ints; pyroute2's module constants would be Any to mypy.
NETLINK_ROUTE = 0
NETLINK_NETFILTER = 12

_NLM_F_DUMP = 0x300
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000

_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_NETLINK_GET_STRICT_CHK = 12

_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP_INTR = 0x10

_NLMSG_NOOP = 1
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLMSG_OVERRUN = 4

_HEADER = struct.Struct("=IHHII")  # struct nlmsghdr
_SEQ_OFFSET = 8

# The kernel caps a dump datagram at 32 KiB, so a 64 KiB buffer never truncates
# one (a truncated datagram would silently lose messages).
_RECV_SIZE = 65536
_DUMP_ATTEMPTS = 3

# The ACK/error message layout under NETLINK_CAP_ACK: errno, then only the header
# of our request, then extended-ACK attributes. Built with type() because the base
# class is untyped (mypy --strict refuses to subclass Any in a class statement).
_CappedAck: Any = type(
    "_CappedAck",
    (pyroute2_lean.nlmsgerr,),
    {
        "__slots__": (),
        "fields": (
            ("error", "i"),
            ("orig_length", "I"),
            ("orig_type", "H"),
            ("orig_flags", "H"),
            ("orig_seq", "I"),
            ("orig_pid", "I"),
        ),
    },
)


class NetlinkError(CniError):
    """The kernel refused a request; ``errno`` says why (e.g. ``errno.EEXIST``)."""

    def __init__(self, err: int, msg: str, details: str = "") -> None:
        super().__init__(LINK_FAILURE, msg, details)
        self.errno = err


def _fail(what: str, err: int, details: str = "") -> NetlinkError:
    """The NetlinkError for ``what`` failing with ``err`` (0: a protocol error)."""
    reason = os.strerror(err).lower() if err else "protocol error"
    return NetlinkError(err, f"failed to {what}: {reason}", details)


class NetlinkSocket:
    """A netlink socket of one protocol in the network namespace current at construction."""

    def __init__(self, protocol: int) -> None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        except OSError as e:
            raise _fail("open a netlink socket", e.errno or 0) from None
        try:
            # Extended ACKs carry the kernel's reason ("VLAN filtering is disabled"),
            # and CAP_ACK keeps error messages at a fixed layout (see _CappedAck).
            sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            sock.bind((0, 0))
        except OSError as e:
            sock.close()
            raise _fail("set up the netlink socket", e.errno or 0) from None
        self._sock: socket.socket | None = sock
        self._seq = 0

    def check_strictly(self) -> None:
        """Ask the kernel to honour the filters of dump requests (index, table...), where it can.

        Without ``NETLINK_GET_STRICT_CHK`` the kernel ignores them and sends everything: an address
        dump of one link returns every address of the namespace, which grows with the number of
        containers. Kernels before 4.20 refuse the option; callers filter the replies themselves
        either way. It also makes the kernel refuse get and dump requests with fields it does not
        filter on, so set only those.
        """
        if self._sock is None:
            return
        try:
            self._sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            pass  # an older kernel: the callers filter the replies themselves

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(self, what: str, msg: Any, msg_type: int, flags: int = 0) -> list[Any]:
        """Send the pyroute2 message ``msg`` as ``msg_type``; return its decoded replies.

        A plain ACK means no replies. ``what`` completes "failed to ..." in errors.
        """
        return self._exchange(what, msg, msg_type, flags)

    def dump(self, what: str, msg: Any, msg_type: int) -> list[Any]:
        """A dump request: every reply until ``NLMSG_DONE``, retried if a change interrupted it."""
        return self._exchange(what, msg, msg_type, _NLM_F_DUMP)

    def _exchange(self, what: str, msg: Any, msg_type: int, flags: int) -> list[Any]:
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = _NLM_F_REQUEST | _NLM_F_ACK | flags
        try:
            msg.encode()
        except (ValueError, TypeError, KeyError, OSError, struct.error) as e:
            # pyroute2 validates nothing up front: a malformed MAC or address only
            # shows up here, as whatever its parser raised.
            raise CniError(LINK_FAILURE, f"failed to {what}: invalid request", repr(e)) from None
        request = bytearray(msg.data)
        dump = flags & _NLM_F_DUMP == _NLM_F_DUMP
        for _ in range(_DUMP_ATTEMPTS):
            replies, interrupted = self._roundtrip(what, request, type(msg))
            # A dump that raced with a change is inconsistent; the kernel flags it and
            # a retry is the documented remedy. Keep the last answer if it persists.
            if not (dump and interrupted):
                break
        return replies

    def _roundtrip(self, what: str, request: bytearray, reply: Any) -> tuple[list[Any], bool]:
        sock = self._sock
        if sock is None:
            raise CniError(LINK_FAILURE, f"failed to {what}: netlink socket is closed")
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        seq = self._seq
        struct.pack_into("=I", request, _SEQ_OFFSET, seq)
        try:
            sock.send(request)
        except OSError as e:
            raise _fail(what, e.errno or 0) from None
        replies: list[Any] = []
        interrupted = False
        while True:
            try:
                data = sock.recv(_RECV_SIZE)
            except OSError as e:
                raise _fail(what, e.errno or 0) from None
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, mflags, mseq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size or offset + length > len(data):
                    raise _fail(what, errno.EPROTO, f"truncated netlink message ({length} bytes)")
                # Replies to an earlier request that was abandoned by an exception
                # may still be queued; they are not ours.
                if mseq == seq:
                    if mflags & _NLM_F_DUMP_INTR:
                        interrupted = True
                    if mtype == _NLMSG_ERROR:
                        _raise_if_error(what, _CappedAck, data, offset)
                        return replies, interrupted
                    if mtype == _NLMSG_DONE:
                        # DONE carries an errno too: a dump can fail half-way.
                        _raise_if_error(what, pyroute2_lean.nlmsgerr, data, offset)
                        return replies, interrupted
                    if mtype == _NLMSG_OVERRUN:
                        raise _fail(what, errno.ENOBUFS, "netlink overrun")
                    if mtype != _NLMSG_NOOP:
                        replies.append(_decode(what, reply, data, offset))
                offset += (length + 3) & ~3


def _decode(what: str, cls: Any, data: bytes, offset: int) -> Any:
    msg = cls(data, offset=offset)
    try:
        msg.decode()
    except Exception as e:  # pyroute2 raises assorted types on malformed input
        raise CniError(LINK_FAILURE, f"failed to {what}: cannot decode reply", repr(e)) from None
    return msg


def _raise_if_error(what: str, cls: Any, data: bytes, offset: int) -> None:
    (err,) = struct.unpack_from("=i", data, offset + _HEADER.size)
    if err == 0:
        return
    details = ""
    msg = cls(data, offset=offset)
    try:
        msg.decode()
        details = msg.get_attr("NLMSGERR_ATTR_MSG") or ""
    except Exception:
        pass  # the errno alone is enough; the extended ACK is a bonus
    raise _fail(what, -err, f"kernel: {details}" if details else "")
