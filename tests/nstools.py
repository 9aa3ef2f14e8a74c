"""Throwaway network namespaces for tests.

Every namespace is named ``<prefix>-<8 hex>`` so parallel runs and leftovers of a
crashed run never collide, and ``cleanup_stale()`` can find what a killed run left
behind. Tests must create links only inside such namespaces, never in the root
namespace, and delete the namespaces in a finalizer (``throwaway_netns`` does).

Deleting a namespace destroys every link in it; a veth whose other end lives in
another namespace goes with it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

NETNS_DIR = "/run/netns"
DEFAULT_PREFIX = "cbt"


def have_privileges() -> bool:
    """Whether this process can create namespaces and links (root with iproute2)."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def unique_name(prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def netns_path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def create_netns(prefix: str = DEFAULT_PREFIX) -> str:
    """Create a uniquely named netns (``ip netns add``) and return its name."""
    name = unique_name(prefix)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, text=True)
    return name


def delete_netns(name: str) -> None:
    """Delete a netns created by ``create_netns``; a missing one is not an error."""
    if not os.path.exists(netns_path(name)):
        return
    subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True, text=True)


def run_in_netns(name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command inside the netns (``ip netns exec``), capturing text output."""
    return subprocess.run(
        ["ip", "netns", "exec", name, *argv], check=check, capture_output=True, text=True
    )


def ip_json(name: str, *args: str) -> Any:
    """``ip -j -d <args>`` inside the netns, parsed: e.g. ``ip_json(ns, "addr", "show")``."""
    out = subprocess.run(
        ["ip", "-n", name, "-j", "-d", *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out) if out.strip() else []


@contextmanager
def throwaway_netns(count: int = 1, prefix: str = DEFAULT_PREFIX) -> Iterator[list[str]]:
    """Create ``count`` namespaces; delete them on exit, also on failure."""
    names: list[str] = []
    try:
        for _ in range(count):
            names.append(create_netns(prefix))
        yield names
    finally:
        for name in names:
            delete_netns(name)


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces named like ours (``<prefix>-<8 hex>``) left by killed runs.

    Only for manual use or a session start when no other test run is going on:
    it cannot tell a leftover from a namespace of a run still in progress.
    """
    removed: list[str] = []
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return removed
    for entry in entries:
        head, _, tail = entry.rpartition("-")
        if head == prefix and len(tail) == 8 and all(c in "0123456789abcdef" for c in tail):
            delete_netns(entry)
            removed.append(entry)
    return removed
