"""Accepts in iptables' FORWARD chain, on hosts where its policy is DROP.

Netfilter runs every base chain registered at a hook, in priority order; a drop in any of
them is final, an accept only ends the chain it is in. So an accept in our table cannot save
a packet from iptables' filter FORWARD chain with policy DROP (Docker sets it), which runs at
the same hook in its own table (``ip filter``/``ip6 filter`` for iptables-nft, x_tables for
iptables-legacy): the only place to let our traffic through is that chain itself.

When the first attachment on a bridge arrives, every such chain (either flavour, either
family) whose policy is DROP gets, at its top, the accepts the iptables backend keeps in
CNIBR-FORWARD (``-o <br> ... RELATED,ESTABLISHED,DNAT -j ACCEPT`` and ``-i <br> -j ACCEPT``;
``-i <br> -o <br> -j ACCEPT`` for an internal bridge), commented ``cni-bridge
shared=nftables:<key>``. Isolation and internal drops stay in our table: a drop anywhere is
final. They go with the bridge's last attachment, found by listing wherever they are. A
policy set to DROP after that first attachment is not noticed until CHECK (which reports
the accepts missing) or the bridge's next first attachment.
"""

from __future__ import annotations

from ..iptables import tools as iptables
from ..iptables.scheme import Rule
from ..iptables.syntax import absent, comment_match, parse_save, printable_comment, render_add, render_cleanup
from . import tools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Sequence
    from typing import Any

    from ..driver import Item

_LEGACY_TABLES = {4: "/proc/net/ip_tables_names", 6: "/proc/net/ip6_tables_names"}


def comment(kind: str, bridge: str) -> str:
    return printable_comment(f"cni-bridge shared=nftables:{kind}:{bridge}")


def rules(kind: str, bridge: str) -> tuple[Rule, ...]:
    c = comment_match(comment(kind, bridge))
    if kind == "internal":
        return (Rule("filter", "FORWARD", f"-i {bridge} -o {bridge} {c} -j ACCEPT", insert=True),)
    return (Rule("filter", "FORWARD", f"-o {bridge} {c} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT -j ACCEPT",
                 insert=True),
            Rule("filter", "FORWARD", f"-i {bridge} {c} -j ACCEPT", insert=True))


def _rules_of(items: Iterable[Item]) -> list[Rule]:
    return [rule for item in items if item[0] == "accept" for rule in rules(str(item[1]), str(item[2]))]


def _legacy_filter(family: int) -> bool:
    try:
        with open(_LEGACY_TABLES[family], encoding="ascii") as f:
            return "filter" in f.read().split()
    except OSError:
        return False  # no ip_tables module: no legacy table can exist


def forward_chains(dropping_only: bool, listed: Sequence[Any] | None = None) -> list[tuple[str, int]]:
    """(flavour, family) of every iptables filter FORWARD chain; only those whose policy is
    DROP if `dropping_only`. `listed`: nft's chains if already listed (tools.LIST_CHAINS)."""
    found = []
    for obj in tools.list_chains() if listed is None else listed:
        chain = obj.get("chain", {})
        if (chain.get("table") == "filter" and chain.get("name") == "FORWARD" and chain.get("family") in ("ip", "ip6")
                and (not dropping_only or chain.get("policy") == "drop")):
            found.append((iptables.NFT, 4 if chain["family"] == "ip" else 6))
    for family in (4, 6):
        if _legacy_filter(family) and (not dropping_only or _policy_drops(_save(iptables.LEGACY, family))):
            found.append((iptables.LEGACY, family))
    return found


def _save(flavour: str, family: int) -> str:
    return iptables.save("filter", family, flavour)


def _policy_drops(saved: str) -> bool:
    return any(line.startswith(":FORWARD DROP") for line in saved.splitlines())


def install(items: Sequence[Item], listed: Sequence[Any] | None = None) -> None:
    """Put the accepts of `items` where a FORWARD policy drops and they are not there yet
    (`listed`: nft's chains, if the caller listed them already)."""
    wanted = _rules_of(items)
    if not wanted:
        return
    for flavour, family in forward_chains(dropping_only=True, listed=listed):
        _, lost = absent([parse_save("filter", _save(flavour, family))], (), wanted)
        if lost:
            iptables.restore(family, render_add((), lost, ()), flavour)


def restore(groups: Sequence[Sequence[Item]], picked: Collection[int]) -> list[int]:
    """Put back the picked groups' accepts where a FORWARD policy drops and they are missing,
    each where it stood (iptables/placement.py: `groups` oldest first); how many per group."""
    from ..iptables.placement import render_restore
    wanted = [((), _rules_of(items)) for items in groups]
    counts = [0] * len(groups)
    if not any(rules for _, rules in wanted):
        return counts
    for flavour, family in forward_chains(dropping_only=True):
        batch, added = render_restore([parse_save("filter", _save(flavour, family))], wanted, picked)
        iptables.restore(family, batch, flavour)
        counts = [a + b for a, b in zip(counts, added)]
    return counts


def remove(items: Sequence[Item]) -> None:
    """Delete the accepts of `items` from every FORWARD chain that holds them (policy changed or not)."""
    comments = {comment(str(item[1]), str(item[2])) for item in items if item[0] == "accept"}
    if not comments:
        return
    for flavour, family in forward_chains(dropping_only=False):
        batch = render_cleanup([parse_save("filter", _save(flavour, family))], (), comments)
        if batch:
            iptables.restore(family, batch, flavour)


def missing(items: Sequence[Item]) -> list[str]:
    """The accepts of `items` lacking where a FORWARD policy drops, as iptables-save lines."""
    wanted = _rules_of(items)
    if not wanted:
        return []
    out: list[str] = []
    for flavour, family in forward_chains(dropping_only=True):
        _, lost = absent([parse_save("filter", _save(flavour, family))], (), wanted)
        out.extend(f"iptables-{flavour} (IPv{family}) filter: {rule.saved}" for rule in lost)
    return out


def lacking(items: Sequence[Item]) -> list[Item]:
    """The accept items of `items` that some dropping FORWARD chain lacks (for repair)."""
    accepts = [item for item in items if item[0] == "accept"]
    if not accepts:
        return []
    saved = [parse_save("filter", _save(flavour, family)) for flavour, family in forward_chains(dropping_only=True)]
    return [item for item in accepts
            if any(absent([s], (), rules(str(item[1]), str(item[2])))[1] for s in saved)]
