"""The nftables backend: the table ``inet cni-bridge`` (scheme.py), one ``nft -j -f -``
transaction per command (tools.py), and, where an iptables FORWARD policy drops, accepts in
that chain (compat.py). One unit, ``inet``: both families live in the one table."""

from __future__ import annotations

from ..driver import Identity, Shared, UnitPlan
from ..model import parse_attachment_comment
from . import compat, scheme, syntax, tools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from ..driver import Item
    from ..model import AttachmentRules

UNIT = "inet"


def _check_unit(unit: str) -> None:
    if unit != UNIT:
        raise ValueError(f"the nftables driver has one unit, {UNIT!r}, not {unit!r}")


def _shared_items(resources: Sequence[Shared]) -> list[Item]:
    return [item for resource in resources for item in resource.items]


def _listed() -> syntax.Listed:
    return syntax.parse_listing(tools.list_table())


class NftablesDriver:
    name = "nftables"

    def units(self) -> tuple[str, ...]:
        return (UNIT,)

    def plan(self, rules: AttachmentRules) -> tuple[UnitPlan, ...]:
        plan = scheme.build(rules)
        if plan is None:
            return ()
        return (UnitPlan(UNIT, plan.items, tuple(Shared(key, items) for key, items in plan.shared)),)

    def shared(self, key: str, unit: str) -> Shared:
        _check_unit(unit)
        return Shared(key, scheme.shared(key))

    def add(self, unit: str, items: Sequence[Item], create: Sequence[Shared], reuse: Sequence[Shared] = ()) -> None:
        """A reused resource's table, sets and chains need no check: adding elements to a
        table a reload deleted fails, and the caller repairs. Its accepts in a dropping
        iptables FORWARD chain live outside our table, so they are put back here; the
        transaction's own nft process lists the chains that tells where."""
        _check_unit(unit)
        created = _shared_items(create)
        accepts = [item for item in (*created, *_shared_items(reuse)) if item[0] == "accept"]
        commands = syntax.render_add(created, items)
        if not accepts:
            tools.run(commands)
            return
        compat.install(accepts, listed=tools.run([*commands, tools.LIST_CHAINS]))

    def restore(self, unit: str, groups: Sequence[Sequence[Item]], picked: Collection[int]) -> list[int]:
        _check_unit(unit)
        listed = _listed()
        counts = [0] * len(groups)
        lost: list[Item] = []
        for index in sorted(picked):
            missing = [item for item in groups[index] if item[0] != "accept" and not listed.has(item)]
            counts[index] = len(missing)
            lost.extend(missing)
        # Everything as shared items: added, so an element that is there already is no error.
        tools.run(syntax.render_add(list(dict.fromkeys(lost)), ()))
        return [a + b for a, b in zip(counts, compat.restore(groups, picked))]

    def delete(self, unit: str, items: Sequence[Item], remove: Sequence[Shared]) -> None:
        _check_unit(unit)
        removed = _shared_items(remove)
        tools.run(syntax.render_delete(removed, items))
        compat.remove(removed)

    def purge(self, unit: str, owners: Collection[Identity], remove: Sequence[Shared]) -> None:
        _check_unit(unit)
        removed = _shared_items(remove)
        comments = [scheme.attachment_comment(o.network, o.container_id, o.ifname) for o in owners]
        comments.extend(scheme.shared_comment(r.key) for r in remove)
        tools.run(syntax.render_purge(_listed(), comments, removed))
        compat.remove(removed)

    def absent(self, unit: str, shared: Sequence[Shared]) -> list[Shared]:
        _check_unit(unit)
        listed = _listed()
        out = []
        for resource in shared:
            lost = [item for item in resource.items if item[0] != "accept" and not listed.has(item)]
            lost.extend(compat.lacking(resource.items))
            if lost:
                out.append(Shared(resource.key, tuple(lost)))
        return out

    def missing(self, unit: str, items: Sequence[Item]) -> list[str]:
        _check_unit(unit)
        listed = _listed()
        out = [syntax.describe(item) for item in items if item[0] != "accept" and not listed.has(item)]
        out.extend(compat.missing(items))
        return out

    def tagged(self, unit: str, network: str) -> set[Identity]:
        _check_unit(unit)
        owners = set()
        for _, _, _, comment in _listed().elements():
            owner = parse_attachment_comment(comment)
            if owner is not None and owner[0] == network:
                owners.add(Identity(*owner))
        return owners
