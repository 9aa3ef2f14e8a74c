"""Run ``nft -j -f -``: one process per transaction, JSON in and out.

Why the nft command and not libnftables in this process (Debian's python3-nftables): a
transaction costs about the same either way once per command (spawning nft ~2.5 ms; loading
ctypes and libnftables ~2.5-4 ms in the bundle, then ~0.1 ms a call), python3-nftables is
outside the virtualenv PyInstaller builds from, and an nft that aborts on some input takes
down only its own process. The process is started like iptables-restore (tools.spawn:
posix_spawn, memfds for stdin, stdout and stderr).
"""

from __future__ import annotations

import json

from ...errors import FIREWALL_FAILURE, CniError
from ..iptables.tools import spawn, which
from .scheme import FAMILY, TABLE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

_cache: dict[str, str] = {}


def nft() -> str:
    """Full path of the nft command; CniError(FIREWALL_FAILURE) if it is not installed."""
    if "nft" not in _cache:
        path = which("nft")
        if not path:
            raise CniError(FIREWALL_FAILURE, "nft not found",
                           "the nftables firewall backend needs the nft command (Debian package nftables)")
        _cache["nft"] = path
    return _cache["nft"]


def available() -> bool:
    try:
        nft()
    except CniError:
        return False
    return True


def _failure(what: str, code: int, err: bytes) -> CniError:
    return CniError(FIREWALL_FAILURE, f"nft {what} failed (exit status {code})", err.decode(errors="replace").strip())


LIST_CHAINS: dict[str, Any] = {"list": {"chains": {}}}


def run(commands: Sequence[Any]) -> list[Any]:
    """Apply `commands` (libnftables JSON) as one transaction: all of them or none. A list
    command among them (LIST_CHAINS) runs in the same process: its objects are returned."""
    if not commands:
        return []
    code, out, err = spawn([nft(), "-j", "-f", "-"], json.dumps({"nftables": list(commands)}).encode())
    if code != 0:
        raise _failure("transaction", code, err)
    objects: list[Any] = json.loads(out)["nftables"] if out.strip() else []
    return objects


def _listing(argv: list[str], what: str, missing_ok: bool) -> list[Any]:
    code, out, err = spawn([nft(), "-j", *argv])
    if code != 0:
        if missing_ok and b"No such file or directory" in err:
            return []
        raise _failure(what, code, err)
    objects: list[Any] = json.loads(out)["nftables"] if out.strip() else []
    return objects


def list_table() -> list[Any]:
    """The objects of our table (``nft -j list table inet cni-bridge``); [] if there is none."""
    return _listing(["list", "table", FAMILY, TABLE], "list table", missing_ok=True)


def list_chains() -> list[Any]:
    """Every chain of every table, without rules (to find iptables' FORWARD and its policy)."""
    return _listing(["list", "chains"], "list chains", missing_ok=False)
