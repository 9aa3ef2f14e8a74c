"""Finding and stopping warm helper processes (cni_bridge/warm_server.py) that tests started.

A helper is recognised by CNI_BRIDGE_HELPER_SERVE in its environment; it lives in the network
namespace of the node that started it, so a node kills the helpers of its own namespace.
"""

from __future__ import annotations

import os
import signal
import time

from tests.polling import has_exited

SERVE_MARK = b"CNI_BRIDGE_HELPER_SERVE="


def helper_processes() -> dict[int, str]:
    """``{pid: socket path}`` of every running warm helper on this machine (its children too)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                variables = handle.read().split(b"\0")
        except OSError:
            continue
        for variable in variables:
            if variable.startswith(SERVE_MARK):
                found[int(entry)] = variable[len(SERVE_MARK):].decode(errors="replace")
    return found


def net_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def helpers_in(netns_path: str) -> list[int]:
    """The helpers (and request children) living in one network namespace."""
    target = os.stat(netns_path).st_ino
    return [pid for pid in helper_processes() if net_inode(pid) == target]


def kill_helpers_in(netns_path: str) -> list[int]:
    """SIGKILL the helpers (and request children) living in one network namespace; wait for them."""
    victims = helpers_in(netns_path)
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(_is_gone(pid) for pid in victims):
        time.sleep(0.01)
    return victims


def _is_gone(pid: int) -> bool:
    """Dead: no process, or a zombie (it holds nothing but its pid). A killed helper is the
    zombie of whoever reaps orphans: this machine's init reaps late, and a test that made
    itself a child subreaper (podman's) reaps its own here."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its reaper's business
    return has_exited(pid)


def served_requests(state_dir: str) -> int:
    """Requests the helpers of ``state_dir`` have handed to a child: each helper keeps
    ``<pid> <served>`` in its ``helper-*.sock.lock``."""
    total = 0
    for name in os.listdir(state_dir) if os.path.isdir(state_dir) else []:
        if name.startswith("helper-") and name.endswith(".sock.lock"):
            with open(os.path.join(state_dir, name), encoding="ascii") as handle:
                fields = handle.read().split()
            total += int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else 0
    return total


def is_helper_file(name: str) -> bool:
    """A warm helper's socket or lock in a stateDir (not plugin state)."""
    return name.startswith("helper-") and name.endswith((".sock", ".sock.lock"))


def assert_served(mode: str, state_dir: str, at_least: int) -> None:
    """With the helper required (a node's mode), its helpers served that many requests."""
    if mode == "require":
        served = served_requests(state_dir)
        assert served >= at_least, f"the warm helper served {served} requests, expected at least {at_least}"
