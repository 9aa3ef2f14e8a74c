"""Waiting for something a test started (a server, a pod, a daemon) to be ready."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(what: str, attempt: Callable[[], tuple[bool, str]], timeout: float = 10.0,
             interval: float = 0.05) -> str:
    """Call ``attempt`` until it returns (True, text), then return the text; after ``timeout``
    fail with the text of the last attempt."""
    deadline = time.monotonic() + timeout
    while True:
        done, text = attempt()
        if done:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last attempt: {text}")
        time.sleep(interval)


def blocked_reading_stdin(pid: int) -> tuple[bool, str]:
    """For wait_for: whether process pid waits in read(2) on a pipe (a plugin waiting for its config)."""
    with open(f"/proc/{pid}/wchan", encoding="utf-8") as handle:
        wchan = handle.read()
    with open(f"/proc/{pid}/syscall", encoding="utf-8") as handle:
        syscall = handle.read()
    # wchan is "pipe_read" or "anon_pipe_read" by kernel version; read(0, ...) on x86-64 is "0 0x0 ".
    return "pipe_read" in wchan or syscall.startswith("0 0x0 "), f"wchan={wchan} syscall={syscall[:40]}"


def has_exited(pid: int) -> bool:
    """No such process, or a zombie: it holds nothing but its pid until its reaper waits for it."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            state = handle.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")
