"""The firewall driver interface: what a backend (iptables, nftables) does for the orchestration.

The orchestration (orchestrate.py) decides *what* must exist and keeps the books: the record
of every attachment, who uses each shared resource, which host ports are claimed, what to
undo after a failure. A driver decides *how*: it turns an attachment's firewall facts into
items of its own rule scheme, and adds, deletes, lists and compares them in the kernel.

Items are opaque to the orchestration: tuples of JSON scalars that the driver reads back
from the records (an iptables rule is ``("rule", table, chain, spec, insert)``). They are
grouped in units, each applied in one kernel transaction: an address family for iptables
(``"4"``, ``"6"``), the one ``inet`` table for nftables.
"""

from __future__ import annotations

import enum

from ..records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence
    from typing import Any, Protocol

    from .model import AttachmentRules

    Item = tuple[Any, ...]
else:
    Protocol = object
    Item = tuple


@record(frozen=True)
class Identity:
    """Whose rules: one attachment of one network."""

    network: str
    container_id: str
    ifname: str


def unit_name(unit: str) -> str:
    """A unit as messages name it: IPv4 and IPv6 for iptables' families, else as it is."""
    return f"IPv{unit}" if unit in ("4", "6") else unit


@record(frozen=True)
class Shared:
    """Items several attachments need (a chain, a bridge's forward accepts): created by the
    first user, removed with the last. The key names it within its unit, for every driver."""

    key: str
    items: tuple[Item, ...]


@record(frozen=True)
class UnitPlan:
    """What one attachment needs in one unit: items of its own, and shared resources."""

    unit: str
    items: tuple[Item, ...]
    shared: tuple[Shared, ...]


class Teardown(enum.Enum):
    """How to take an attachment's unit out of the kernel."""

    EXACT = "exact"            # delete the recorded items; if the kernel refuses, fall back to LISTING
    LISTING = "listing"        # list the kernel and remove whatever of the attachment is there
    RECORDS_ONLY = "records"   # nothing reached the kernel: only the books change


class FirewallDriver(Protocol):
    """One backend. Every method raises CniError(FIREWALL_FAILURE) when the kernel refuses."""

    name: str

    def units(self) -> tuple[str, ...]:
        """The units this host can hold (no IPv6 unit on a kernel without IPv6)."""
        ...

    def plan(self, rules: AttachmentRules) -> tuple[UnitPlan, ...]:
        """The attachment's items and shared resources, per unit; units with nothing left out."""
        ...

    def shared(self, key: str, unit: str) -> Shared:
        """A shared resource as this driver defines it today (when no record says otherwise)."""
        ...

    def add(self, unit: str, items: Sequence[Item], create: Sequence[Shared], reuse: Sequence[Shared] = ()) -> None:
        """One transaction: create the shared resources, then add the items. `reuse` are the
        shared resources others created that the items rely on: if a firewall reload took
        some of them, the transaction is refused (the orchestration then repairs them and
        tries again) or the driver puts them back itself; never builds on a missing one."""
        ...

    def restore(self, unit: str, groups: Sequence[Sequence[Item]], picked: Collection[int]) -> list[int]:
        """One transaction: put back what the kernel lacks of the picked groups (indexes into
        `groups`: the items of shared resources and attachments, oldest first), each where
        it stood before a firewall reload took it, leaving what is there alone and never
        repeating it. Returns how many items each group got back."""
        ...

    def delete(self, unit: str, items: Sequence[Item], remove: Sequence[Shared]) -> None:
        """One transaction: delete exactly these items and shared resources. Refused whole if
        any of them is missing from the kernel."""
        ...

    def purge(self, unit: str, owners: Collection[Identity], remove: Sequence[Shared]) -> None:
        """List the kernel and remove whatever exists of these attachments and shared resources
        (tagged with their comments, or in their chains): the fallback when records and kernel
        disagree."""
        ...

    def absent(self, unit: str, shared: Sequence[Shared]) -> list[Shared]:
        """The parts of these shared resources that the kernel lacks."""
        ...

    def missing(self, unit: str, items: Sequence[Item]) -> list[str]:
        """Descriptions of the items the kernel lacks, for CHECK."""
        ...

    def tagged(self, unit: str, network: str) -> set[Identity]:
        """Attachments of `network` that have something tagged in the kernel (GC's sweep)."""
        ...
