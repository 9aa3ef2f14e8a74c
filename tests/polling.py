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
