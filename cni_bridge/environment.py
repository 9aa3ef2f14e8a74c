"""The CNI_* environment of one invocation, validated per command as the spec requires."""

from __future__ import annotations

import re
from .records import record

from .errors import INVALID_ENVIRONMENT, CniError
from .network.naming import interface_name_problem

COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")

# Which variables each command cannot do without (CNI spec 1.1, section 2 "Parameters").
_REQUIRED: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}

# Container IDs and network names become file and chain names: the reference's pattern.
SAFE_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")


@record(frozen=True)
class Invocation:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: str
    path: tuple[str, ...]


def _require_utf8(name: str, value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:  # os.environ keeps undecodable bytes as surrogates
        raise CniError(INVALID_ENVIRONMENT, f"{name}: not valid UTF-8", repr(value)) from None


def validate_ifname(ifname: str) -> None:
    _require_utf8("CNI_IFNAME", ifname)
    problem = interface_name_problem(ifname)
    if problem is not None:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME: interface name {problem}", repr(ifname))


def validate_container_id(container_id: str) -> None:
    _require_utf8("CNI_CONTAINERID", container_id)
    if not SAFE_NAME.fullmatch(container_id):
        raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID: invalid characters in container ID", container_id)


def read_command(environ: dict[str, str]) -> str:
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_COMMAND: unknown command {command!r}",
                       "expected one of " + ", ".join(COMMANDS))
    return command


def read_invocation(environ: dict[str, str]) -> Invocation:
    command = read_command(environ)
    required = _REQUIRED[command]
    missing = [name for name in required if not environ.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"required environment variables missing: {','.join(missing)}",
                       f"CNI_COMMAND={command} needs {','.join(required)}")
    invocation = Invocation(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        args=environ.get("CNI_ARGS", ""),
        path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
    )
    # Values are checked only where the command needs them, as the reference does;
    # an optional CNI_NETNS is still a path we may open, so it is never trusted blindly.
    if "CNI_CONTAINERID" in required:
        validate_container_id(invocation.container_id)
    if "CNI_IFNAME" in required:
        validate_ifname(invocation.ifname)
    return invocation
