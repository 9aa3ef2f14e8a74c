"""libnftables JSON for the table of scheme.py: the commands that add and delete items, and a
reader that sees what ``nft -j list table`` prints as items again.

Keys and data are kept as text in the items (``br0 . 10.1.0.2``, ``tcp . 8080``, ``jump
masq-<h>``); they become JSON by the types of their set, and what nft lists is turned back
into the same text (an address, ``addr/len`` for a prefix, a number for a port, ``jump
<chain>`` for a verdict), so comparing is comparing strings.
"""

from __future__ import annotations

from ...records import record
from .scheme import CHAINS, FAMILY, NETWORKS_CHAINS, SETS, TABLE, networks_chain_rules

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    from ..driver import Item
    from .scheme import SetDef

    Command = dict[str, Any]

TABLE_ITEM = ("table",)


def _where(**extra: Any) -> dict[str, Any]:
    return {"family": FAMILY, "table": TABLE, **extra}


def _component(text: str, kind: str) -> Any:
    if kind == "inet_service":
        return int(text)
    if kind == "verdict":
        verdict, _, target = text.partition(" ")
        return {verdict: {"target": target}}
    if kind in ("ipv4_addr", "ipv6_addr") and "/" in text:
        address, _, length = text.partition("/")
        return {"prefix": {"addr": address, "len": int(length)}}
    return text


def _key(definition: SetDef, text: str) -> Any:
    parts = [_component(part, kind) for part, kind in zip(text.split(" . "), definition.key)]
    return parts[0] if len(parts) == 1 else {"concat": parts}


def _element(item: Item, whole: bool) -> Any:
    """An element as JSON: with its comment and (in a map) its data if `whole`, else its key
    alone, which is what a delete names."""
    _, set_name, key, data, comment = item
    definition = SETS[set_name]
    value = _key(definition, key)
    if not whole:
        return value
    if comment:
        value = {"elem": {"val": value, "comment": comment}}
    return [value, _component(data, definition.data)] if definition.data else value


def _elements(verb: str, items: Iterable[Item], whole: bool) -> list[Command]:
    """One command per set, in the order the sets first appear."""
    by_set: dict[str, list[Any]] = {}
    for item in items:
        by_set.setdefault(item[1], []).append(_element(item, whole))
    return [{verb: {"element": _where(name=name, elem=elems)}} for name, elems in by_set.items()]


def _set_command(name: str) -> Command:
    definition = SETS[name]
    body = _where(name=name, type=list(definition.key) if len(definition.key) > 1 else definition.key[0])
    if definition.data:
        body["map"] = definition.data
        return {"add": {"map": body}}
    return {"add": {"set": body}}


def _chain_commands(name: str) -> list[Command]:
    """Create the chain or empty a leftover (its rules follow): always the same chain afterwards."""
    definition = CHAINS.get(name)
    body = _where(name=name)
    if definition is not None and definition.hook:
        body.update(type=definition.type, hook=definition.hook, prio=definition.priority, policy="accept")
    return [{"add": {"chain": body}}, {"flush": {"chain": _where(name=name)}}]


def _rules(item: Item) -> tuple[tuple[tuple[Any, ...], str], ...]:
    """The rules of a chain item, fixed or per set of networks."""
    return CHAINS[item[1]].rules if item[0] == "chain" else networks_chain_rules(item)


def _rule_commands(item: Item) -> list[Command]:
    return [{"add": {"rule": _where(chain=item[1], expr=list(expr), comment=comment)}} for expr, comment in _rules(item)]


def _of_kind(items: Iterable[Item], *kinds: str) -> list[Item]:
    return [item for item in items if item[0] in kinds]


def _chains(items: Iterable[Item]) -> list[Item]:
    return _of_kind(items, "chain", *NETWORKS_CHAINS)


def render_add(shared_items: Sequence[Item], own: Sequence[Item]) -> list[Command]:
    """One transaction: the table, sets, chains and rules of shared resources, their elements
    (added: repeating one is harmless), then the attachment's elements (created: an element
    another attachment holds is an error, not a silent takeover)."""
    commands: list[Command] = []
    if TABLE_ITEM in shared_items:
        commands.append({"add": {"table": {"family": FAMILY, "name": TABLE}}})
    commands.extend(_set_command(item[1]) for item in _of_kind(shared_items, "set"))
    chains = _chains(shared_items)
    for item in chains:
        commands.extend(_chain_commands(item[1]))
    for item in chains:  # a rule may go to a chain created after its own
        commands.extend(_rule_commands(item))
    commands.extend(_elements("add", _of_kind(shared_items, "element"), True))
    commands.extend(_elements("create", _of_kind(own, "element"), True))
    return commands


def render_delete(shared_items: Sequence[Item], own: Sequence[Item]) -> list[Command]:
    """One transaction, refused whole if anything named is missing: the attachment's elements,
    then shared elements, chains (those that jump first), sets and the table. Deleting the
    table takes everything in it, so then nothing else is named."""
    if TABLE_ITEM in shared_items:
        return [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
    commands = _elements("delete", [*_of_kind(own, "element"), *_of_kind(shared_items, "element")], False)
    commands.extend({"delete": {"chain": _where(name=item[1])}} for item in reversed(_chains(shared_items)))
    commands.extend({"delete": {"map" if SETS[item[1]].data else "set": _where(name=item[1])}}
                    for item in _of_kind(shared_items, "set"))
    return commands


# --- reading the table -------------------------------------------------------------------


@record(frozen=True)
class Listed:
    """The table as nft lists it: sets with their elements (key text -> (data text, comment)),
    chains with the comments of their rules, in order. `present` is False if there is no table."""

    present: bool
    sets: dict[str, dict[str, tuple[str, str]]]
    chains: dict[str, tuple[str, ...]]

    def has(self, item: Item) -> bool:
        kind = item[0]
        if kind == "table":
            return self.present
        if kind == "set":
            return item[1] in self.sets
        if kind == "chain" or kind in NETWORKS_CHAINS:
            expected = tuple(comment for _, comment in _rules(item))
            if kind != "chain" and not expected:
                return item[1] in self.chains  # its networks unknown (no record): present is all we can tell
            return self.chains.get(item[1]) == expected
        if kind == "element":
            found = self.sets.get(item[1], {}).get(item[2])
            return found is not None and found[0] == item[3]
        raise ValueError(f"not an nftables item: {item!r}")

    def elements(self) -> Iterable[tuple[str, str, str, str]]:
        """(set, key, data, comment) of every element."""
        for name, elements in self.sets.items():
            for key, (data, comment) in elements.items():
                yield name, key, data, comment


EMPTY = Listed(False, {}, {})


def _text(value: Any) -> str:
    if isinstance(value, dict):
        for verdict in ("jump", "goto"):
            if verdict in value:
                return f"{verdict} {value[verdict]['target']}"
        if "concat" in value:
            return " . ".join(_text(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            return "-".join(_text(v) for v in value["range"])
    return str(value)


def _listed_element(raw: Any) -> tuple[str, str, str]:
    """(key, data, comment) of one element as nft -j lists it."""
    data = ""
    if isinstance(raw, list):  # a map element: [key, data]
        raw, data = raw[0], _text(raw[1])
    comment = ""
    if isinstance(raw, dict) and "elem" in raw:
        comment = str(raw["elem"].get("comment", ""))
        raw = raw["elem"]["val"]
    return _text(raw), data, comment


def parse_listing(objects: Sequence[Any]) -> Listed:
    """The objects of ``nft -j list table inet cni-bridge`` (the "nftables" array)."""
    present = False
    sets: dict[str, dict[str, tuple[str, str]]] = {}
    chains: dict[str, list[str]] = {}
    for obj in objects:
        if "table" in obj:
            present = True
        for kind in ("set", "map"):
            if kind in obj:
                elements = sets.setdefault(str(obj[kind]["name"]), {})
                for raw in obj[kind].get("elem", []):
                    key, data, comment = _listed_element(raw)
                    elements[key] = (data, comment)
        if "chain" in obj:
            chains.setdefault(str(obj["chain"]["name"]), [])
        if "rule" in obj:
            chains.setdefault(str(obj["rule"]["chain"]), []).append(str(obj["rule"].get("comment", "")))
    return Listed(present, sets, {name: tuple(comments) for name, comments in chains.items()})


def render_purge(listed: Listed, comments: Iterable[str], shared_items: Sequence[Item]) -> list[Command]:
    """Remove, from what the table really holds, every element carrying one of `comments` and
    whatever exists of `shared_items`: the fallback when records and kernel disagree."""
    if not listed.present:
        return []
    if TABLE_ITEM in shared_items:
        return [{"delete": {"table": {"family": FAMILY, "name": TABLE}}}]
    wanted = set(comments)
    # Elements that jump to a chain going away go too, whoever they belong to: the kernel
    # refuses to delete a chain something still jumps to.
    jumps = {f"jump {item[1]}" for item in _of_kind(shared_items, *NETWORKS_CHAINS)}
    doomed: dict[tuple[str, str], Item] = {
        (name, key): ("element", name, key, "", comment) for name, key, data, comment in listed.elements()
        if comment in wanted or data in jumps}
    for item in _of_kind(shared_items, "element"):
        if item[2] in listed.sets.get(item[1], {}):
            doomed.setdefault((item[1], item[2]), item)
    commands = _elements("delete", doomed.values(), False)
    commands.extend({"delete": {"chain": _where(name=item[1])}} for item in reversed(_chains(shared_items))
                    if item[1] in listed.chains)
    commands.extend({"delete": {"map" if SETS[item[1]].data else "set": _where(name=item[1])}}
                    for item in _of_kind(shared_items, "set") if item[1] in listed.sets)
    return commands


def describe(item: Item) -> str:
    """An item as a person looks for it in ``nft list table inet cni-bridge``."""
    kind = item[0]
    if kind == "table":
        return f"table {FAMILY} {TABLE}"
    if kind in ("set", "chain", *NETWORKS_CHAINS):
        return f"{'map' if kind == 'set' and SETS[item[1]].data else 'chain' if kind != 'set' else 'set'} {item[1]}"
    if kind == "element":
        data = f" : {item[3]}" if item[3] else ""
        return f"element {item[2]}{data} in {item[1]}"
    return " ".join(str(part) for part in item)
