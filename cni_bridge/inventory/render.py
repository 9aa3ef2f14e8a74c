"""Entries as an aligned table for people, and as the JSON document scripts read (its shape is
documented in the README, Troubleshooting; keep them in step)."""

from __future__ import annotations

from ..firewall.iptables.syntax import unquote
from .collect import RULES_MISSING, RULES_NONE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from ..firewall.portmap import Claim
    from .collect import Entry

COLUMNS = ("NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "PORTS", "BRIDGE", "VETH", "RULES")
SHORT_ID = 12  # as docker and crictl print container IDs
_WILDCARDS = {"0.0.0.0": 4, "::": 6}


def port_text(claims: Sequence[Claim]) -> str:
    """Published ports as `8080/tcp` (every address of both families), `0.0.0.0:8080/tcp` (one
    family's), `203.0.113.1:8080/tcp`, `[2001:db8::1]:8080/tcp`; in the order claimed."""
    everywhere = {(c.protocol, c.host_port) for c in claims if c.host_ip == "0.0.0.0"} & \
                 {(c.protocol, c.host_port) for c in claims if c.host_ip == "::"}
    out: dict[str, None] = {}
    for c in claims:
        if (c.protocol, c.host_port) in everywhere and c.host_ip in _WILDCARDS:
            out[f"{c.host_port}/{c.protocol}"] = None
        else:
            host = f"[{c.host_ip}]" if ":" in c.host_ip else c.host_ip
            out[f"{host}:{c.host_port}/{c.protocol}"] = None
    return ",".join(out) or "-"


def _without_comment(line: str) -> str:
    """An iptables line without its comment match: the row already says whose rule it is."""
    head, found, tail = line.partition(" -m comment --comment ")
    return f"{head} {unquote(tail)[1]}".rstrip() if found else line


def rules_text(entry: Entry) -> str:
    if entry.rules == RULES_MISSING:
        return f"{len(entry.missing)} missing: {_without_comment(entry.missing[0])}"
    return "-" if entry.rules == RULES_NONE else entry.rules


def row(entry: Entry, full_ids: bool) -> tuple[str, ...]:
    return (entry.network, entry.container_id if full_ids else entry.container_id[:SHORT_ID],
            entry.ifname or "?", ",".join(entry.addresses) or "-", port_text(entry.ports), entry.bridge or "-",
            entry.veth, rules_text(entry))


def table(entries: Sequence[Entry], full_ids: bool = False) -> str:
    """A header and one line per entry, columns aligned (the last one, which may be long, is not padded)."""
    rows = [COLUMNS, *(row(e, full_ids) for e in entries)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    return "".join("  ".join([*(cell.ljust(w) for cell, w in zip(r, widths)), r[-1]]).rstrip() + "\n"
                   for r in rows)


def document(entries: Sequence[Entry], state_dir: str, data_dir: str, warnings: Sequence[str]) -> dict[str, Any]:
    return {
        "stateDir": state_dir,
        "dataDir": data_dir,
        "attachments": [{
            "network": e.network,
            "containerID": e.container_id,
            "ifname": e.ifname,
            "addresses": list(e.addresses),
            "ports": [{"protocol": c.protocol, "hostPort": c.host_port, "hostIP": c.host_ip} for c in e.ports],
            "bridge": e.bridge,
            "hostVeth": {"name": e.host_veth, "state": e.veth},
            "rules": {"driver": e.driver, "state": e.rules, "missing": list(e.missing)},
            "intact": e.intact,
        } for e in entries],
        "warnings": list(warnings),
    }
