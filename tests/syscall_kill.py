"""SIGKILL a process at an exact system call, for crash tests, with strace's syscall tampering.

A run of the plugin is first traced (``trace_argv``) to list its *kill points*: every system
call that can change what the node holds (a file created, written, renamed, linked or removed,
a directory made or removed, a netlink request, a child process started or waited for). A
read-only open is not a point: killing before it leaves the same state as killing before the
next point. The run is then repeated once per chosen point, with strace delivering SIGKILL on
entry to that call (``kill_argv``), so the call itself never happens.

strace counts injections per system call and per tracee (strace(1), "Accounting of syscalls
that are subject to injection is done per syscall and per tracee"): a point is therefore named
by its call and how many calls of that name came before it in the process (``when=N``), not by
its position in the run. Only the plugin process is traced (no ``-f``): its children
(iptables-restore, nft) have their own counters and must run untouched. The launcher script
execs the bundle in the same process, so strace follows it across the exec.

The kill lands where it was meant to only if the run repeats itself; ``landed`` reads the
killed run's own trace so a test can check it did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Calls that change the node's state (files, links, rules) or start a step that does (a child).
STATE_CHANGING = ("write", "pwrite64", "openat", "rename", "renameat", "renameat2", "link", "linkat",
                  "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "ftruncate", "fchmod", "sendto",
                  "sendmsg", "utimensat", "clone", "clone3", "vfork", "wait4")
_TRACED = "trace=" + ",".join(STATE_CHANGING)
_CALL = re.compile(r"^(?P<name>[a-z0-9_]+)\((?P<args>.*)\)\s+= (?P<ret>.*)$")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_NLMSG_TYPE = re.compile(r"nlmsg_type=([A-Za-z0-9_]+)")


@dataclass(frozen=True)
class Point:
    """Just before one system call of a run."""

    position: int  # among the run's points, from 0
    syscall: str
    occurrence: int  # calls of this name so far in the process, this one included (strace's when=)
    signature: str  # what the call does, to check that a kill landed on it

    def __str__(self) -> str:
        return f"#{self.position} {self.signature}"


def _signature(name: str, args: str) -> str:
    """The call and its object: the path or data for file calls, the message type for netlink;
    never a descriptor or address number, which differ between runs."""
    if name in ("sendto", "sendmsg"):
        found = _NLMSG_TYPE.search(args)
        return f"{name} {found.group(1) if found else '?'}"
    if name in ("clone", "clone3", "vfork", "wait4"):
        return name
    quoted = _QUOTED.search(args)
    return f"{name} {quoted.group(1)[:60]!s}" if quoted else name


def _changes_state(name: str, args: str) -> bool:
    # An openat that creates, truncates or writes; a read-only one leaves nothing behind.
    return name != "openat" or any(flag in args for flag in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"))


def trace_argv(log: str) -> list[str]:
    """Run a command under strace, logging the state-changing calls to `log`."""
    return ["strace", "-qq", "-o", log, "-e", _TRACED]


def kill_argv(point: Point, log: str) -> list[str]:
    """Run a command under strace, SIGKILLed on entry to `point`'s call; logged to `log`."""
    return [*trace_argv(log), "-e", f"inject={point.syscall}:signal=SIGKILL:when={point.occurrence}"]


def points(trace: str) -> list[Point]:
    """The kill points of a traced run (the text of its log), in order."""
    seen: dict[str, int] = {}
    out: list[Point] = []
    for line in trace.splitlines():
        call = _CALL.match(line)
        if call is None:
            continue
        name, args = call.group("name"), call.group("args")
        seen[name] = seen.get(name, 0) + 1
        if _changes_state(name, args):
            out.append(Point(len(out), name, seen[name], _signature(name, args)))
    return out


def landed(trace: str) -> str | None:
    """The signature of the call a killed run died on, None if it was not killed at a call."""
    lines = trace.splitlines()
    if not lines or "killed by SIGKILL" not in lines[-1]:
        return None
    for line in reversed(lines[:-1]):
        call = _CALL.match(line)
        if call is not None and call.group("ret") == "?":  # entered, never returned
            return _signature(call.group("name"), call.group("args"))
    return None


def spread(all_points: list[Point], second_half_stride: int, first_half_stride: int, offset: int = 0) -> list[Point]:
    """Every `second_half_stride`-th point of the run's second half and every
    `first_half_stride`-th of its first half, counted from `offset` (strides of 1: every point)."""
    half = len(all_points) // 2
    return [p for p in all_points
            if (p.position - offset) % (second_half_stride if p.position >= half else first_half_stride) == 0]
