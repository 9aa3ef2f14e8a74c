"""Putting back rules a flush took, each where it was: the restore text for `cni-bridge restore`.

A chain's order is history: appended rules stand in the order they were added, inserted ones
(``-I chain 1``) above everything older. Replaying the groups that added rules (shared
resources and attachments, oldest first) gives the order our rules had in every chain. A
missing rule goes back just above the next of ours that is still there; else an inserted
rule goes to the top, or just below an inserted one of ours above it, and an appended rule
to the end, as when it was first added (after the rules a reload put there first). So a
flushed chain gets its rules back in the order it had them, rules that survived stay and are
never repeated, and rules that are not ours stay where they are.

Pure functions; reused by the nftables backend for its accepts in iptables' FORWARD chain.
"""

from __future__ import annotations

from .syntax import TABLES_ADD_ORDER, render_tables

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from .scheme import Rule
    from .syntax import Saved

    Group = tuple[Sequence[tuple[str, str]], Sequence[Rule]]  # (table, chain) created, rules added


def expected_order(groups: Sequence[Group]) -> dict[tuple[str, str], list[tuple[int, Rule]]]:
    """Per (table, chain): our rules as the groups left them, top first, with their group."""
    chains: dict[tuple[str, str], list[tuple[int, Rule]]] = {}
    for index, (_, rules) in enumerate(groups):
        for rule in rules:
            sequence = chains.setdefault((rule.table, rule.chain), [])
            if rule.insert:
                sequence.insert(0, (index, rule))
            else:
                sequence.append((index, rule))
    return chains


def _chain_lines(chain: str, present: list[str], expected: list[tuple[int, Rule]],
                 picked: Collection[int], counts: list[int]) -> list[str]:
    """The restore lines that put the picked groups' missing rules into one chain."""
    held = set(present)
    if all(rule.spec in held for _, rule in expected):
        return []
    simulated = list(present)
    later_present: list[str | None] = [None] * len(expected)
    following: str | None = None
    for i in range(len(expected) - 1, -1, -1):
        later_present[i] = following
        if expected[i][1].spec in held:
            following = expected[i][1].spec
    lines: list[str] = []
    # The last of ours seen so far, and where it stands in `simulated` when known.
    previous: str | None = None
    previous_at: int | None = None
    for i, (group, rule) in enumerate(expected):
        spec = rule.spec
        if spec in held:
            previous, previous_at = spec, None
            continue
        if group not in picked:
            continue
        following = later_present[i]
        if rule.insert and previous is None:
            position = 0
        elif following is not None:
            position = simulated.index(following)
        elif rule.insert and previous is not None:
            position = (simulated.index(previous) if previous_at is None else previous_at) + 1
        else:
            position = len(simulated)
        lines.append(f"-A {chain} {spec}" if position == len(simulated) else f"-I {chain} {position + 1} {spec}")
        simulated.insert(position, spec)
        held.add(spec)
        previous, previous_at = spec, position
        counts[group] += 1
    return lines


def render_restore(saved: Sequence[Saved], groups: Sequence[Group], picked: Collection[int]) -> tuple[str, list[int]]:
    """The `iptables-restore --noflush` text that puts back what the saved tables lack of the
    picked groups (indexes into `groups`, which are oldest first), and how many chains and
    rules each group gets back. Empty text when nothing is missing."""
    by_table = {table.table: table for table in saved}
    counts = [0] * len(groups)
    sections: dict[str, list[str]] = {}
    declared: set[tuple[str, str]] = set()
    for index in sorted(picked):
        for table, chain in groups[index][0]:
            exists = table in by_table and chain in by_table[table].chains
            if not exists and (table, chain) not in declared:
                declared.add((table, chain))
                sections.setdefault(table, []).append(f":{chain} - [0:0]")
                counts[index] += 1
    listed: dict[tuple[str, str], list[str]] = {}
    for table_listed in saved:
        for name, spec in table_listed.rules:
            listed.setdefault((table_listed.table, name), []).append(spec)
    for (table, chain), expected in expected_order(groups).items():
        lines = _chain_lines(chain, listed.get((table, chain), []), expected, picked, counts)
        if lines:
            sections.setdefault(table, []).extend(lines)
    return render_tables(sections, TABLES_ADD_ORDER), counts
