"""The two books of attachments, read without any lock.

The firewall records (firewall/state.py) and the host-local store (ipam/store.py) are written
by plugins under their locks, by atomic renames or single writes; a reader that takes no lock
sees each file whole or not at all. Files vanish under it when a DEL runs meanwhile: such an
attachment is simply no longer there. Taking the writers' locks would make an operator's look
wait behind (or stall) a runtime's ADD, and the store's lock file is created by whoever opens
it first, which a read-only command must not do.
"""

from __future__ import annotations

import os

from ..errors import CniError
from ..firewall.state import Store, current_generation, is_other_generation, record_path
from ..ipam.store import Store as HostLocalStore
from ..ipam.store import ip_filename
from ..records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection

    from ..firewall.driver import Shared
    from ..firewall.state import Attachment


@record(frozen=True)
class Reservation:
    """One address of the store: `ifname` is "" in a legacy file that names only the container."""

    network: str
    container_id: str
    ifname: str
    ip: str


class FirewallBooks:
    """The records of a state directory, read-only (the Store is never entered: that locks)."""

    def __init__(self, state_dir: str, warnings: list[str]) -> None:
        self.directory = state_dir
        self._store = Store(state_dir)
        self._warnings = warnings

    def stale(self) -> bool:
        """Whether the records describe the tables of an earlier boot or another network
        namespace, as the plugin decides it: its next firewall operation discards them, and
        this view ignores them."""
        try:
            with open(os.path.join(self.directory, "generation"), encoding="utf-8") as f:
                recorded = f.read().strip()
        except OSError:
            return False
        return bool(recorded) and is_other_generation(recorded, current_generation())

    def attachments(self) -> list[Attachment]:
        directory = os.path.join(self.directory, "attachments")
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._warnings.append(f"cannot list {directory}: {exc.strerror}")
            return []
        if names and self.stale():
            self._warnings.append(f"the records in {self.directory} are from an earlier boot or another "
                                  "network namespace; ignored (the next ADD, DEL or GC removes them)")
            return []
        out = []
        for name in names:
            if not name.endswith(".json"):
                continue  # a temp file of a write in progress (or interrupted)
            try:
                att = self._store.load(name[:-len(".json")])
            except CniError as exc:
                self._warnings.append(str(exc))
                continue
            if att is not None:  # None: deleted since the listing
                out.append(att)
        return out

    def recorded(self, att: Attachment) -> bool:
        """Whether the record is still there (a DEL may have removed it since it was read)."""
        return os.path.exists(record_path(self.directory, att.key))

    def definition(self, unit: str, key: str) -> Shared | None:
        return self._store.definition(unit, key)


def reservations(data_dir: str, networks: Collection[str], warnings: list[str]) -> list[Reservation]:
    """Every reservation under `data_dir` (every network's directory, or those in `networks`),
    read by the store itself, without its lock (Store.reservations_unlocked)."""
    try:
        found = sorted(os.listdir(data_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        warnings.append(f"cannot list {data_dir}: {exc.strerror}")
        return []
    out = []
    errors: list[CniError] = []
    for network in found if not networks else [n for n in found if n in networks]:
        for ip, container_id, ifname in HostLocalStore(data_dir, network).reservations_unlocked(errors):
            out.append(Reservation(network, container_id, ifname or "", ip_filename(ip)))
    warnings.extend(str(error) for error in errors)
    return out
