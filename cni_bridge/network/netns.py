"""Network namespace handles: open a CNI_NETNS path, step into it and back.

Python 3.11 has no ``os.setns`` (3.12 adds it), so ``inside()`` calls libc through
ctypes; ctypes is imported only there because it costs ~3 ms.

``setns`` moves the calling *thread* only. ``inside()`` therefore remembers the
thread's own namespace (``/proc/thread-self``, not ``/proc/self``, which is the
main thread's) and always returns to it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import NETNS_FAILURE, CniError

# typing costs ~2.6 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNET = 0x40000000
# ioctl(fd, NS_GET_NSTYPE) == _IO(0xb7, 0x3): the namespace type of an nsfs file.
# It fails with ENOTTY on any other file, so it checks both "is a namespace" and
# "is a network namespace" in one cheap call (Linux >= 4.11).
_NS_GET_NSTYPE = 0xB703
_OWN_NETNS = "/proc/thread-self/ns/net"


def _reason(e: OSError) -> str:
    return os.strerror(e.errno).lower() if e.errno else str(e)


def open_netns(path: str) -> int:
    """Open a network namespace file read-only; never creates it. Returns an fd.

    The caller owns the fd and closes it with ``os.close``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CniError(NETNS_FAILURE, f'failed to open netns "{path}": {_reason(e)}') from None
    try:
        nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.ENOTTY, errno.EINVAL):
            raise CniError(NETNS_FAILURE, f'"{path}" is not a network namespace') from None
        raise CniError(NETNS_FAILURE, f'failed to inspect netns "{path}": {_reason(e)}') from None
    if nstype != CLONE_NEWNET:
        os.close(fd)
        raise CniError(NETNS_FAILURE, f'"{path}" is a namespace, but not a network namespace')
    return fd


def open_container_netns(path: str) -> int:
    """open_netns, refusing the plugin's own namespace: configuring CNI_IFNAME there would
    move or shadow the host's own interface (the reference skel refuses it too)."""
    fd = open_netns(path)
    try:
        own = os.stat(_OWN_NETNS)
    except OSError as e:
        os.close(fd)
        raise CniError(NETNS_FAILURE, f"failed to inspect the current netns: {_reason(e)}") from None
    found = os.fstat(fd)
    if (found.st_dev, found.st_ino) == (own.st_dev, own.st_ino):
        os.close(fd)
        raise CniError(NETNS_FAILURE, f'CNI_NETNS "{path}" is the plugin\'s own network namespace',
                       "the container must have a network namespace of its own")
    return fd


def _setns(libc: Any, fd: int, what: str) -> None:
    if libc.setns(fd, CLONE_NEWNET) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise CniError(NETNS_FAILURE, f"failed to {what}: {os.strerror(err).lower()}")


@contextmanager
def inside(fd: int) -> Iterator[None]:
    """Run the body with the calling thread in the network namespace ``fd``.

    Sockets created in the body stay in that namespace after the block. If the
    thread cannot be switched back, CniError is raised: carrying on in the wrong
    namespace would silently configure the wrong host.
    """
    import ctypes

    # CDLL(None) is the already-loaded libc; find_library("c") would spawn ldconfig.
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        home = os.open(_OWN_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CniError(NETNS_FAILURE, f"failed to open the current netns: {_reason(e)}") from None
    try:
        _setns(libc, fd, "enter netns")
        try:
            yield
        finally:
            _setns(libc, home, "return to the original netns")
    finally:
        os.close(home)
