"""The firewall rules the kernel holds, listed once per command, and the checks of attachments
against them (the host veths are links.py's).

One listing per firewall driver and unit (one ``iptables-save`` per family, one ``nft -j list
table``, and for nftables' FORWARD accepts one save per dropping FORWARD chain) answers every
attachment's rules. The drivers' own ``missing`` lists the kernel at every call, which is right
for one CHECK and a thousand listings for this.
"""

from __future__ import annotations

import contextlib

from ..errors import CniError
from ..firewall.driver import unit_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from ..firewall.driver import FirewallDriver, Item
    from ..firewall.state import Attachment
    from .sources import FirewallBooks


class _IptablesView:
    """One family's tables, from one iptables-save of every table."""

    def __init__(self, family: int) -> None:
        from ..firewall.iptables import tools
        from ..firewall.iptables.syntax import parse_save
        text = tools.save("", family)
        tables = {line[1:].strip() for line in text.splitlines() if line.startswith("*")}
        saved = [parse_save(table, text) for table in tables]
        self._chains = {s.table: set(s.chains) for s in saved}
        self._lines = {s.table: s.lines() for s in saved}

    def missing(self, items: Sequence[Item]) -> list[str]:
        # The items as iptables/driver.py records them, ("chain", table, chain) and ("rule", table,
        # chain, spec, insert), read in place: its split() makes a record of each, ~75 ms here for
        # a thousand attachments. A rule is there if iptables-save prints it as "-A <chain> <spec>".
        out = []
        for item in items:
            table = str(item[1])
            if item[0] == "chain":
                if item[2] not in self._chains.get(table, ()):
                    out.append(f"{table}: chain {item[2]}")
            elif (line := f"-A {item[2]} {item[3]}") not in self._lines.get(table, ()):
                out.append(f"{table}: {line}")
        return out


class _NftablesView:
    """The table inet cni-bridge from one listing; the iptables FORWARD chains that need our
    accepts (policy DROP) from one save each, listed on first need."""

    def __init__(self) -> None:
        from ..firewall.nftables import syntax, tools
        self._listed = syntax.parse_listing(tools.list_table())
        self._forward: list[tuple[str, int, set[str]]] | None = None

    def _dropping_forward_chains(self) -> list[tuple[str, int, set[str]]]:
        if self._forward is None:
            from ..firewall.iptables import tools
            from ..firewall.iptables.syntax import parse_save
            from ..firewall.nftables.compat import forward_chains
            self._forward = [(flavour, family, parse_save("filter", tools.save("filter", family, flavour)).lines())
                             for flavour, family in forward_chains(dropping_only=True)]
        return self._forward

    def missing(self, items: Sequence[Item]) -> list[str]:
        from ..firewall.nftables.compat import rules
        from ..firewall.nftables.syntax import describe
        out = [describe(item) for item in items if item[0] != "accept" and not self._listed.has(item)]
        accepts = [rule for item in items if item[0] == "accept" for rule in rules(str(item[1]), str(item[2]))]
        if accepts:
            for flavour, family, lines in self._dropping_forward_chains():
                out.extend(f"iptables-{flavour} (IPv{family}) filter: {rule.saved}"
                           for rule in accepts if rule.saved not in lines)
        return out


_View = _IptablesView | _NftablesView


class RuleCheck:
    """Which recorded items of an attachment, and of the shared resources it uses, the kernel
    lacks. Each driver's unit is listed once, on first need; shared resources are checked once."""

    def __init__(self, books: FirewallBooks, warnings: list[str]) -> None:
        self._books = books
        self._warnings = warnings
        self._views: dict[tuple[str, str], _View | None] = {}
        self._drivers: dict[str, FirewallDriver] = {}
        self._shared: dict[tuple[str, str, str], list[str]] = {}

    @contextlib.contextmanager
    def prefetching(self, pairs: Iterable[tuple[str, str]]) -> Iterator[None]:
        """List these (driver, unit)s side by side while the body runs, and wait for them at its
        end: each listing is a process of its own, and with a thousand attachments waiting for
        them is most of the time this command takes, time the body (the links' dump) can use."""
        import threading
        threads = [threading.Thread(target=self._view, args=pair) for pair in set(pairs) if pair not in self._views]
        for thread in threads:
            thread.start()
        try:
            yield
        finally:
            for thread in threads:
                thread.join()

    def _view(self, driver: str, unit: str) -> _View | None:
        if (driver, unit) not in self._views:
            view: _View | None = None
            try:
                if driver == "iptables":
                    view = _IptablesView(int(unit))
                elif driver == "nftables":
                    view = _NftablesView()
                else:
                    self._warnings.append(f"unknown firewall driver {driver!r} in a record")
            except (CniError, ValueError) as exc:
                self._warnings.append(f"cannot list the {driver} rules ({unit_name(unit)}): {exc}")
            self._views[(driver, unit)] = view
        return self._views[(driver, unit)]

    def _driver(self, name: str) -> FirewallDriver:
        if name not in self._drivers:
            from ..firewall import driver_named
            self._drivers[name] = driver_named(name)
        return self._drivers[name]

    def _shared_missing(self, driver: str, unit: str, key: str, view: _View) -> list[str]:
        if (driver, unit, key) not in self._shared:
            resource = self._books.definition(unit, key)
            if resource is None:
                try:
                    resource = self._driver(driver).shared(key, unit)
                except (CniError, ValueError):
                    resource = None  # a resource this version does not know: nothing to compare with
            self._shared[(driver, unit, key)] = view.missing(resource.items) if resource is not None else []
        return self._shared[(driver, unit, key)]

    def missing(self, att: Attachment) -> list[str] | None:
        """Descriptions of what the kernel lacks ([] when intact); None if it cannot be told
        (the reason is in the warnings, once)."""
        out: list[str] = []
        for installed in att.units:
            view = self._view(att.driver, installed.unit)
            if view is None:
                return None
            lost = view.missing(installed.items)
            for key in installed.shared:
                lost.extend(self._shared_missing(att.driver, installed.unit, key, view))
            out.extend(f"{unit_name(installed.unit)} {line}" for line in lost)
        return out
