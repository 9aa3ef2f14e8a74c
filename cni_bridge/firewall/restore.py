"""Put back, after a firewall reload or flush, whatever the kernel lost of every recorded
attachment's firewall and of the shared resources they use (``cni-bridge restore``).

The records in the state directory (state.py) hold every item each attachment installed,
the driver that installed it, and every shared resource's definition as created. Per driver
and unit, the shared resources and attachments become groups, oldest first (definitions and
records are written when they come, so their times replay the history), and the driver puts
back what the kernel lacks of them in one transaction, each item where it stood (it lists the
unit once, not once per attachment). What is there is left alone and never repeated, so a
second run changes nothing. If a unit's transaction is refused, each group is tried on its
own, so that the report names exactly which attachments and shared resources could not be
restored, and why, and the others are restored all the same.

Imported only by the restore command: nothing on the ADD path needs it.
"""

from __future__ import annotations

from ..errors import CniError
from ..records import record
from .driver import unit_name
from .state import Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .driver import FirewallDriver, Item
    from .orchestrate import Drivers
    from .state import Attachment


@record(frozen=True)
class UnitReport:
    """What restore did in one unit of one driver."""

    driver: str
    unit: str
    attachments: int
    shared: int
    restored_items: int
    restored_owners: tuple[str, ...]  # the groups that got something back
    failures: tuple[str, ...]


@record(frozen=True)
class Group:
    """Items restored together: one shared resource or one attachment's unit."""

    label: str
    items: tuple[Item, ...]


def _attachment_label(att: Attachment) -> str:
    return f"container {att.container_id} ifname {att.ifname} (network {att.network})"


def restore(state_dir: str, drivers: Drivers) -> tuple[list[UnitReport], list[str]]:
    """Restore every recorded attachment of `state_dir`; returns a report per (driver, unit)
    and the problems met outside any unit (unreadable records, unknown drivers)."""
    problems: list[str] = []
    reports: list[UnitReport] = []
    with Store(state_dir) as store:
        by_driver: dict[str, list[Attachment]] = {}
        for key, att in sorted(store.attachments(), key=lambda entry: (store.recorded_at(entry[0]), entry[0])):
            if att is None:
                problems.append(f"attachment record {key}: unreadable (remove it; DEL and GC cope without it)")
                continue
            by_driver.setdefault(att.driver, []).append(att)
        for name, atts in by_driver.items():
            try:
                driver = drivers(name)
            except CniError as exc:
                problems.extend(f"{_attachment_label(att)}: {exc}" for att in atts)
                continue
            units = list(dict.fromkeys(installed.unit for att in atts for installed in att.units))
            for unit in units:
                if unit not in driver.units():
                    continue  # a family this host cannot hold (no IPv6 in the kernel)
                reports.append(_restore_unit(store, driver, unit, atts))
    return reports, problems


def _groups(store: Store, driver: FirewallDriver, unit: str,
            atts: Sequence[Attachment]) -> tuple[list[Group], list[Group], list[str]]:
    """The unit's shared resources and attachments as groups, each oldest first; and the
    shared resources that cannot be told."""
    first_seen: dict[str, int] = {}
    own: list[Group] = []
    for att in atts:  # oldest first
        for installed in att.units:
            if installed.unit == unit:
                own.append(Group(_attachment_label(att), installed.items))
                for key in installed.shared:
                    first_seen.setdefault(key, len(first_seen))
    shared: list[tuple[int, int, Group]] = []
    problems = []
    for key, seen in first_seen.items():
        try:
            resource = store.definition(unit, key) or driver.shared(key, unit)
        except ValueError as exc:
            problems.append(f"shared firewall rules {key}: {exc}")
            continue
        # Created in one ADD, their definitions may carry the same time: then the order
        # that ADD created them in, which is the order its record names them.
        shared.append((store.defined_at(unit, key), seen, Group(f"shared firewall rules {key}", resource.items)))
    shared.sort(key=lambda entry: (entry[0], entry[1]))
    return [group for _, _, group in shared], own, problems


def _restore_unit(store: Store, driver: FirewallDriver, unit: str, atts: Sequence[Attachment]) -> UnitReport:
    shared, own, failures = _groups(store, driver, unit, atts)
    groups = [*shared, *own]
    items = [group.items for group in groups]
    try:
        counts = driver.restore(unit, items, range(len(groups)))
    except CniError:
        # Find who: each group alone (shared resources first, which attachments need).
        counts = [0] * len(groups)
        for index, group in enumerate(groups):
            try:
                counts[index] = driver.restore(unit, items, (index,))[index]
            except CniError as exc:
                failures.append(f"{group.label}: {exc}")
    restored = tuple(group.label for group, count in zip(groups, counts) if count)
    return UnitReport(driver.name, unit, len(own), len(shared), sum(counts), restored,
                      tuple(f"{unit_name(unit)} ({driver.name}) {line}" for line in failures))


def summary(state_dir: str, reports: Sequence[UnitReport], problems: Sequence[str]) -> tuple[list[str], list[str]]:
    """(lines for stdout, lines for stderr): what was restored, and what could not be."""
    out = []
    for r in reports:
        where = f"{state_dir}: {unit_name(r.unit)} ({r.driver}), {r.attachments} attachments, {r.shared} shared resources"
        if r.restored_items:
            out.append(f"{where}: restored {r.restored_items} items of {len(r.restored_owners)} of them")
            out.extend(f"  {label}" for label in r.restored_owners[:20])
            if len(r.restored_owners) > 20:
                out.append(f"  ... and {len(r.restored_owners) - 20} more")
        else:
            out.append(f"{where}: nothing missing")
    if not reports and not problems:
        out.append(f"{state_dir}: no attachments recorded")
    errors = [*problems, *(line for r in reports for line in r.failures)]
    return out, errors
