"""The iptables backend (nf_tables or legacy flavour, as tools.py finds): one
`iptables-restore --noflush` per family and command, rules compared as `iptables-save` text."""

from __future__ import annotations

import os

from ...network.naming import attachment_digest
from ..driver import Identity, Shared, UnitPlan
from ..model import parse_attachment_comment
from . import scheme, tools
from .scheme import Rule, SharedRules
from .syntax import Saved, absent, comment_of, missing, parse_save, render_add, render_cleanup, render_delete

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from ..driver import Item
    from ..model import AttachmentRules

_CHAIN = "chain"
_RULE = "rule"


def items_of(chains: Sequence[tuple[str, str]], rules: Sequence[Rule]) -> tuple[Item, ...]:
    return (*((_CHAIN, table, chain) for table, chain in chains),
            *((_RULE, r.table, r.chain, r.spec, r.insert) for r in rules))


def split(items: Sequence[Item]) -> tuple[list[tuple[str, str]], list[Rule]]:
    chains = [(str(i[1]), str(i[2])) for i in items if i[0] == _CHAIN]
    rules = [Rule(str(i[1]), str(i[2]), str(i[3]), bool(i[4])) for i in items if i[0] == _RULE]
    return chains, rules


def _generic(resource: SharedRules) -> Shared:
    return Shared(resource.key, items_of(resource.chains, resource.rules))


def _specific(resource: Shared) -> SharedRules:
    chains, rules = split(resource.items)
    return SharedRules(resource.key, tuple(chains), tuple(rules))


def _tables(chains: Sequence[tuple[str, str]], rules: Sequence[Rule]) -> set[str]:
    return {table for table, _ in chains} | {rule.table for rule in rules}


class IptablesDriver:
    name = "iptables"

    def units(self) -> tuple[str, ...]:
        # Without IPv6 in the kernel ip6tables cannot run; there is nothing to filter then.
        return ("4", "6") if os.path.exists("/proc/net/if_inet6") else ("4",)

    def plan(self, rules: AttachmentRules) -> tuple[UnitPlan, ...]:
        units = self.units()
        return tuple(UnitPlan(str(fr.family), items_of(fr.chains, fr.rules), tuple(_generic(s) for s in fr.shared))
                     for fr in scheme.build(rules) if str(fr.family) in units)

    def shared(self, key: str, unit: str) -> Shared:
        return _generic(scheme.shared(key, int(unit)))

    def add(self, unit: str, items: Sequence[Item], create: Sequence[Shared], reuse: Sequence[Shared] = ()) -> None:
        chains, rules = split(items)
        relied_on = [rule for s in reuse for rule in split(s.items)[1]]
        tools.restore(int(unit), render_add(chains, rules, [_specific(s) for s in create], relied_on))

    def restore(self, unit: str, groups: Sequence[Sequence[Item]], picked: Collection[int]) -> list[int]:
        from .placement import render_restore
        specific = [split(items) for items in groups]
        tables = set().union(*(_tables(chains, rules) for chains, rules in specific)) if specific else set()
        if not tables:
            return [0] * len(groups)
        listing = tools.save("", int(unit))
        batch, counts = render_restore([parse_save(t, listing) for t in sorted(tables)], specific, picked)
        tools.restore(int(unit), batch)
        return counts

    def delete(self, unit: str, items: Sequence[Item], remove: Sequence[Shared]) -> None:
        chains, rules = split(items)
        tools.restore(int(unit), render_delete(chains, rules, [_specific(s) for s in remove]))

    def _saved(self, unit: str, tables: Collection[str]) -> list[Saved]:
        return [parse_save(table, tools.save(table, int(unit))) for table in sorted(tables)]

    def purge(self, unit: str, owners: Collection[Identity], remove: Sequence[Shared]) -> None:
        resources = [_specific(s) for s in remove]
        comments = {scheme.attachment_comment(o.network, o.container_id, o.ifname) for o in owners}
        comments.update(scheme.shared_comment(r.key) for r in resources)
        chains: set[str] = set()
        for o in owners:
            digest = attachment_digest(o.network, o.container_id, o.ifname)
            chains.update((scheme.masq_chain(digest), scheme.dnat_chain(digest)))
        chains.update(chain for r in resources for _, chain in r.chains)
        tables = {"nat"} if owners else set()  # an attachment's own rules live only in nat
        for r in resources:
            tables |= _tables(r.chains, r.rules)
        tools.restore(int(unit), render_cleanup(self._saved(unit, tables), chains, comments))

    def absent(self, unit: str, shared: Sequence[Shared]) -> list[Shared]:
        resources = [_specific(s) for s in shared]
        tables: set[str] = set()
        for r in resources:
            tables |= _tables(r.chains, r.rules)
        saved = self._saved(unit, tables)
        out = []
        for r in resources:
            chains, rules = absent(saved, r.chains, r.rules)
            if chains or rules:
                out.append(_generic(SharedRules(r.key, tuple(chains), tuple(rules))))
        return out

    def missing(self, unit: str, items: Sequence[Item]) -> list[str]:
        chains, rules = split(items)
        return missing(self._saved(unit, _tables(chains, rules)), chains, rules)

    def tagged(self, unit: str, network: str) -> set[Identity]:
        owners = set()
        for _, spec in self._saved(unit, ("nat",))[0].rules:
            comment = comment_of(spec)
            owner = parse_attachment_comment(comment) if comment else None
            if owner is not None and owner[0] == network:
                owners.add(Identity(*owner))
        return owners
