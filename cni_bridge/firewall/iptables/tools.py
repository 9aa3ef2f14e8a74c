"""Run iptables-restore / iptables-save of the host's backend (nf_tables or legacy).

Which backend: ``CNI_BRIDGE_IPTABLES=nft|legacy`` wins (tests run both); otherwise the
one the host's ``iptables-restore`` is, found by resolving its symlinks (Debian's
alternatives end at ``xtables-nft-multi`` or ``xtables-legacy-multi``) without running
anything. Rules written by one backend are invisible to the other, so following the
host's choice is what keeps our rules next to everyone else's.

Each call is one process (cni_bridge/process.py).
"""

from __future__ import annotations

import os

from ...errors import FIREWALL_FAILURE, CniError
from ...process import find_program, run

ENV_BACKEND = "CNI_BRIDGE_IPTABLES"
NFT = "nft"
LEGACY = "legacy"

# Paths found once per process: a command runs several restores and saves.
_cache: dict[str, str] = {}


def which(name: str) -> str:
    """Full path of an executable in PATH or the usual system directories, "" if none."""
    return find_program(name)


def _backend_of(path: str) -> str:
    # iptables >= 1.8 installs xtables-nft-multi and xtables-legacy-multi; anything
    # else (xtables-multi, a plain iptables-restore binary) predates nf_tables support.
    return NFT if "nft" in os.path.basename(os.path.realpath(path)) else LEGACY


def backend() -> str:
    """"nft" or "legacy": the environment's choice, else the host's iptables-restore."""
    chosen = os.environ.get(ENV_BACKEND, "")
    if chosen:
        if chosen not in (NFT, LEGACY):
            raise CniError(FIREWALL_FAILURE, f"{ENV_BACKEND}={chosen!r} is not supported",
                           f'set it to "{NFT}" or "{LEGACY}", or unset it to follow iptables-restore')
        return chosen
    if "backend" not in _cache:
        default = which("iptables-restore")
        if not default:
            raise CniError(FIREWALL_FAILURE, "iptables-restore not found",
                           "install iptables (nf_tables or legacy) on the host")
        _cache["backend"] = _backend_of(default)
    return _cache["backend"]


def tool(family: int, kind: str, flavour: str = "") -> str:
    """Full path of (ip6)tables-<backend>-restore or -save for the family (of `flavour`
    rather than the chosen backend, if given)."""
    chosen = flavour or backend()
    base = "iptables" if family == 4 else "ip6tables"
    key = f"{chosen}:{base}-{kind}"
    if key not in _cache:
        path = which(f"{base}-{chosen}-{kind}")
        if not path:
            # Installations without the suffixed names have only the one backend.
            plain = which(f"{base}-{kind}")
            if plain and _backend_of(plain) == chosen:
                path = plain
        if not path:
            raise CniError(FIREWALL_FAILURE, f"{base}-{chosen}-{kind} not found",
                           f"the {chosen} iptables backend is selected but its tools are not installed")
        _cache[key] = path
    return _cache[key]


def spawn(argv: list[str], stdin: bytes = b"") -> tuple[int, bytes, bytes]:
    """Run argv[0] (a full path) with stdin; return (exit code, stdout, stderr)."""
    try:
        return run(argv, stdin)
    except OSError as exc:
        raise CniError(FIREWALL_FAILURE, f"failed to run {argv[0]}: {exc.strerror}") from None


def _offending_line(stderr: str, batch: str) -> str:
    """The batch line iptables-restore names in "line N failed" / "Error occurred at line: N"."""
    lines = batch.splitlines()
    for marker in ("line ", "at line: "):
        start = stderr.rfind(marker)
        while start >= 0:
            digits = ""
            for ch in stderr[start + len(marker):]:
                if not ch.isdigit():
                    break
                digits += ch
            if digits and 0 < int(digits) <= len(lines):
                return lines[int(digits) - 1]
            start = stderr.rfind(marker, 0, start)
    return ""


def restore(family: int, batch: str, flavour: str = "") -> None:
    """Apply a batch with ``--noflush --wait``; CniError(FIREWALL_FAILURE) if refused.

    --noflush: only the named chains are touched, never a whole table. --wait: legacy
    iptables serialises writers with a lock, which another tool may hold for a moment.
    """
    if not batch:
        return
    path = tool(family, "restore", flavour)
    code, _, err = spawn([path, "--noflush", "--wait"], batch.encode())
    if code != 0:
        message = err.decode(errors="replace").strip()
        line = _offending_line(message, batch)
        details = message + (f"\nfailing line: {line}" if line else "")
        raise CniError(FIREWALL_FAILURE,
                       f"{os.path.basename(path)} failed (IPv{family}, exit status {code})", details)


def save(table: str, family: int, flavour: str = "") -> str:
    """One table as iptables-save prints it (for CHECK, GC and the removal fallback); every
    table with `table` "" (restore lists a family once)."""
    path = tool(family, "save", flavour)
    code, out, err = spawn([path, "-t", table] if table else [path])
    if code != 0:
        raise CniError(FIREWALL_FAILURE, f"{os.path.basename(path)}{' -t ' + table if table else ''} failed "
                       f"(exit status {code})", err.decode(errors="replace").strip())
    return out.decode(errors="replace")
