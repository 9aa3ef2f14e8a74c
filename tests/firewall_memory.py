"""A firewall driver whose "kernel" is a set in memory, for testing the orchestration without root.

Its rule scheme is small but shaped like the real ones: an attachment owns a masquerade item
per address and a DNAT item per published port, tagged with its identity; a bridge's forward
accepts and the host-port chain are shared. Like iptables, it refuses to put an item into a
chain that does not exist (a DNAT item needs the shared host-port chain), refuses an exact
delete of an item that is not there, and can be told to refuse the next transactions of a unit.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from cni_bridge.errors import FIREWALL_FAILURE, CniError
from cni_bridge.firewall.driver import Identity, Item, Shared, UnitPlan
from cni_bridge.firewall.model import AttachmentRules, parse_address

HOSTPORT_CHAIN: Item = ("chain", "hostport")


class MemoryDriver:
    def __init__(self, name: str = "memory", units: tuple[str, ...] = ("4", "6")) -> None:
        self.name = name
        self._units = units
        self.kernel: dict[str, set[Item]] = {unit: set() for unit in units}
        self.refuse: dict[str, int] = {}  # unit -> how many more transactions to refuse
        self.transactions: list[tuple[str, str]] = []  # (operation, unit), in order

    # --- the scheme ------------------------------------------------------------------

    def units(self) -> tuple[str, ...]:
        return self._units

    def plan(self, rules: AttachmentRules) -> tuple[UnitPlan, ...]:
        who = (rules.network, rules.container_id, rules.ifname)
        plans = []
        for unit in self._units:
            ips = [ip for ip, _ in rules.ips if str(parse_address(ip, "ips[]")[0]) == unit]
            if not ips:
                continue
            items: list[Item] = [("masq", *who, ip) for ip in ips] if rules.ip_masq else []
            shared = [self.shared(f"bridge:{rules.bridge}", unit)]
            if rules.port_mappings:
                items += [("dnat", *who, pm.protocol, pm.host_port) for pm in rules.port_mappings]
                shared.append(self.shared("hostport", unit))
            plans.append(UnitPlan(unit, tuple(items), tuple(shared)))
        return tuple(plans)

    def shared(self, key: str, unit: str) -> Shared:
        if key == "hostport":
            return Shared(key, (HOSTPORT_CHAIN,))
        if key.startswith("bridge:"):
            return Shared(key, (("accept", key[len("bridge:"):]),))
        raise ValueError(f"unknown shared resource {key!r}")

    # --- the kernel -----------------------------------------------------------------

    def _transaction(self, operation: str, unit: str) -> None:
        self.transactions.append((operation, unit))
        if self.refuse.get(unit, 0) > 0:
            self.refuse[unit] -= 1
            raise CniError(FIREWALL_FAILURE, f"refused {operation} in unit {unit}")

    def add(self, unit: str, items: Sequence[Item], create: Sequence[Shared], reuse: Sequence[Shared] = ()) -> None:
        self._transaction("add", unit)
        if any(i not in self.kernel[unit] for s in reuse for i in s.items):
            raise CniError(FIREWALL_FAILURE, "a shared item relied on is missing")  # as iptables' -C
        adding = [*(i for s in create for i in s.items), *items]
        held = self.kernel[unit] | set(adding)
        if any(i[0] == "dnat" for i in adding) and HOSTPORT_CHAIN not in held:
            raise CniError(FIREWALL_FAILURE, "no chain hostport")
        self.kernel[unit] = held

    def restore(self, unit: str, groups: Sequence[Sequence[Item]], picked: Collection[int]) -> list[int]:
        self._transaction("restore", unit)
        counts = [0] * len(groups)
        held = set(self.kernel[unit])
        for index in sorted(picked):
            lost = [i for i in groups[index] if i not in held]
            if any(i[0] == "dnat" for i in lost) and HOSTPORT_CHAIN not in held:
                raise CniError(FIREWALL_FAILURE, "no chain hostport")
            held.update(lost)
            counts[index] = len(lost)
        self.kernel[unit] = held
        return counts

    def delete(self, unit: str, items: Sequence[Item], remove: Sequence[Shared]) -> None:
        self._transaction("delete", unit)
        removing = {*items, *(i for s in remove for i in s.items)}
        if not removing <= self.kernel[unit]:
            raise CniError(FIREWALL_FAILURE, f"not there: {sorted(map(str, removing - self.kernel[unit]))}")
        self.kernel[unit] -= removing

    def purge(self, unit: str, owners: Collection[Identity], remove: Sequence[Shared]) -> None:
        self._transaction("purge", unit)
        tags = {(o.network, o.container_id, o.ifname) for o in owners}
        shared = {i for s in remove for i in s.items}
        self.kernel[unit] = {i for i in self.kernel[unit] if i not in shared and tuple(i[1:4]) not in tags}

    def absent(self, unit: str, shared: Sequence[Shared]) -> list[Shared]:
        out = []
        for resource in shared:
            lost = tuple(i for i in resource.items if i not in self.kernel[unit])
            if lost:
                out.append(Shared(resource.key, lost))
        return out

    def missing(self, unit: str, items: Sequence[Item]) -> list[str]:
        return [str(i) for i in items if i not in self.kernel[unit]]

    def tagged(self, unit: str, network: str) -> set[Identity]:
        return {Identity(*i[1:4]) for i in self.kernel[unit] if i[0] in ("masq", "dnat") and i[1] == network}
