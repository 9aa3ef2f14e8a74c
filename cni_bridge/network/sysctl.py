"""Read and write network sysctls under /proc/sys/net.

Keys are paths relative to /proc/sys with "/" separators, e.g.
``"net/ipv4/ip_forward"``. Dots are never separators here, so a key can name an
interface like ``eth0.5`` directly: ``"net/ipv6/conf/eth0.5/accept_ra"``.

A key is either such a string or a ``(template, ifname)`` pair, e.g.
``("net/ipv6/conf/{}/accept_ra", "eth0.5")``. The pair form is for names that come
from outside (config, CNI_IFNAME): the name is checked to be one path component,
so a hostile name cannot climb out of /proc/sys/net.

Plain string keys must start with "net/" and contain no "..", no empty component
and no leading "/". Every error is CniError with code SYSCTL_FAILURE.
"""

from __future__ import annotations

import os

from ..errors import SYSCTL_FAILURE, CniError
from .naming import interface_name_problem

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    Key: TypeAlias = str | tuple[str, str]

_ROOT = "/proc/sys/"


def _check_path(key: str, shown: str) -> None:
    if not key.startswith("net/"):
        raise CniError(SYSCTL_FAILURE, f'invalid sysctl key "{shown}": must start with "net/"')
    if ".." in key or "//" in key or key.endswith("/") or "\0" in key:
        raise CniError(SYSCTL_FAILURE, f'invalid sysctl key "{shown}"')


def _check_ifname(ifname: str, shown: str) -> None:
    # A name the kernel would take (dev_valid_name) is a single, harmless path component.
    problem = interface_name_problem(ifname)
    if problem is not None:
        raise CniError(SYSCTL_FAILURE, f'invalid interface name in sysctl key "{shown}": {ifname!r} {problem}')


def resolve(key: Key) -> str:
    """The absolute /proc/sys path of a key, after validating it."""
    if isinstance(key, tuple):
        template, ifname = key
        shown = template.replace("{}", ifname)
        if template.count("{}") != 1:
            raise CniError(SYSCTL_FAILURE, f'invalid sysctl key template "{template}": needs one "{{}}"')
        _check_path(template.replace("{}", "x"), shown)
        _check_ifname(ifname, shown)
        return _ROOT + shown
    _check_path(key, key)
    return _ROOT + key


def _name(key: Key) -> str:
    return key[0].replace("{}", key[1]) if isinstance(key, tuple) else key


def read(key: Key) -> str | None:
    """The value without its trailing newline, or None if the key does not exist."""
    path = resolve(key)
    try:
        with open(path, encoding="ascii") as f:
            return f.read().rstrip("\n")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CniError(SYSCTL_FAILURE, f'failed to read sysctl "{_name(key)}": {_reason(e)}') from None


def write(key: Key, value: str | int) -> None:
    path = resolve(key)
    try:
        # No O_CREAT and no truncation: proc files exist or the key is wrong.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(value).encode("ascii"))
        finally:
            os.close(fd)
    except OSError as e:
        raise CniError(
            SYSCTL_FAILURE, f'failed to write sysctl "{_name(key)}" = "{value}": {_reason(e)}'
        ) from None


def ensure_if_present(key: Key, value: str | int) -> bool:
    """ensure() for keys that may legitimately be absent (IPv6 disabled on the host)."""
    current = read(key)
    if current is None or current.split() == str(value).split():
        return False
    write(key, value)
    return True


def ensure(key: Key, value: str | int) -> bool:
    """Write only if the value differs; returns whether it wrote.

    Values compare by whitespace-separated fields, since the kernel prints vector
    sysctls with tabs ("4096\\t131072\\t6291456") while callers write spaces.
    """
    current = read(key)
    if current is not None and current.split() == str(value).split():
        return False
    write(key, value)
    return True


def _reason(e: OSError) -> str:
    return os.strerror(e.errno).lower() if e.errno else str(e)
