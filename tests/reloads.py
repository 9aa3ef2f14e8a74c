"""The firewall reloads the restore tests play: each takes our rules the way a real one does."""

from __future__ import annotations

import subprocess

from tests import nstools

FLUSHES = ("iptables -F FORWARD", "iptables -t nat -F", "nft flush ruleset", "iptables-restore without ours")


def reload_firewall(netns: str, flavour: str, how: str, saved: tuple[str, str]) -> None:
    """One of FLUSHES in ``netns`` with the iptables ``flavour`` of its own commands; ``saved``
    is the node's iptables-save (IPv4, IPv6) from before our rules, the file a reload restores.
    The nodes run with FORWARD policy DROP, which a reloaded nftables configuration sets again."""
    for family in (4, 6):
        base = "iptables" if family == 4 else "ip6tables"
        if how == "iptables -F FORWARD":
            nstools.run_in_netns(netns, f"{base}-{flavour}", "-w", "-F", "FORWARD")
        elif how == "iptables -t nat -F":
            nstools.run_in_netns(netns, f"{base}-{flavour}", "-w", "-t", "nat", "-F")
        elif how == "iptables-restore without ours":
            subprocess.run(["ip", "netns", "exec", netns, f"{base}-{flavour}-restore"], input=saved[family // 6],
                           text=True, check=True, capture_output=True)
    if how == "nft flush ruleset":
        nstools.run_in_netns(netns, "nft", "flush", "ruleset")
        if flavour == "nft":  # it took iptables-nft's tables, policies included
            for base in ("iptables", "ip6tables"):
                nstools.run_in_netns(netns, f"{base}-nft", "-w", "-P", "FORWARD", "DROP")
