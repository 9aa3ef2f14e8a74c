"""What the firewall installed, on disk: per attachment, per shared resource, per host port.

One directory per network namespace (firewall state is per namespace), host-wide: the
shared chains and the host ports belong to every network on the host, so a directory
per network would count users and detect conflicts wrongly. Layout:

    lock                           exclusive flock held by every firewall operation
    generation                     "<boot id> <netns inode>" the records below describe
    attachments/<key>.json         one per attachment: the driver that installed it, its
                                   items per unit (driver.py), its shared keys and its claims
    shared/<unit>/<key>/def.json   a shared resource's items as created
    shared/<unit>/<key>/u-<key>    one empty file per attachment using it
    ports/<proto>-<port>/<hostIP>  a published port; holds the holder's identity
    <any of these>.tmp             the content of a write in progress (below)

<key> of an attachment is 32 hex digits of sha256(network, container ID, ifname).

Users of shared resources are counted with one marker file each, so "am I the last
user?" reads one small directory, never every attachment; the resource is created by
the ADD that finds no marker and removed by the DEL that leaves none. A port claim is
found by its name: a conflict check lists only ``ports/<proto>-<port>/``, which holds
the few host IPs that port is published on (a wildcard conflicts with every address of
its family, so a per-address file alone would not do).

Everything happens under the flock, which also serialises the iptables batches. Files are
written whole under a temp name and renamed into place (claims: linked, which fails if the
claim exists, as a second line of defence; cni_bridge/atomic_write.py), so a reader never
sees a half-written record or claim. A writer killed halfway leaves only the temp file:
`<file>.tmp`, or `ports/claim.tmp` for a claim (a name no claim listing reads). The next
write of that file replaces it, DEL removes its attachment's, and GC every one.

Order of writes: ADD records before it touches iptables and DEL forgets after, so a
crash leaves a record of rules that may not exist (DEL's fallback copes) rather than
rules nobody knows about. No fsync: after a power loss the kernel's rules are gone too,
and the generation check below discards records older than the current tables.

Generation: if the boot ID or the network namespace differs from the one recorded, the
tables these files describe no longer exist (reboot, or a new namespace reusing a state
directory); the records are deleted before use, so stale claims cannot block ports. A boot
ID that cannot be read (cni_bridge/boot.py) proves nothing, so the records are kept; the
IPAM store follows the same rule for its reservations (ipam/boot_scope.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os

from .. import atomic_write
from ..boot import current_boot_id
from ..errors import FIREWALL_FAILURE, PORT_CONFLICT, CniError
from ..network.naming import attachment_digest
from ..records import record
from .driver import Shared
from .portmap import Claim

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from .driver import Item

_DIR_MODE = 0o700  # records name containers; nobody else needs to read them
_FILE_MODE = 0o600
_KEY_DIGITS = 32
_USER_PREFIX = "u-"
_DEF_NAME = "def.json"
_TEMP_SUFFIX = ".tmp"
_CLAIM_TEMP = "claim" + _TEMP_SUFFIX  # in ports/: every claim is written under the flock
_FORMAT = 2
# Records of format 1 were written by the iptables code before drivers existed.
_FORMAT_1_DRIVER = "iptables"


def attachment_key(network: str, container_id: str, ifname: str) -> str:
    return attachment_digest(network, container_id, ifname)[:_KEY_DIGITS]


def record_path(state_dir: str, key: str) -> str:
    return os.path.join(state_dir, "attachments", f"{key}.json")


def is_recorded(state_dir: str, key: str) -> bool:
    """Whether the attachment has a record, or the temp file of one its killed ADD left
    (DEL has something to remove either way). An unlocked peek: only an ADD of this very
    attachment could create either meanwhile, and the runtime never runs two commands for
    one attachment at once."""
    path = record_path(state_dir, key)
    return os.path.exists(path) or os.path.exists(_temp_of(path))


@record(frozen=True)
class Installed:
    """What ADD put into one unit: its own items, and the keys of the shared resources it uses."""

    unit: str
    items: tuple[Item, ...]
    shared: tuple[str, ...]


@record(frozen=True)
class Attachment:
    driver: str
    network: str
    container_id: str
    ifname: str
    units: tuple[Installed, ...]
    claims: tuple[Claim, ...]

    @property
    def key(self) -> str:
        return attachment_key(self.network, self.container_id, self.ifname)


def _error(action: str, path: str, exc: OSError) -> CniError:
    return CniError(FIREWALL_FAILURE, f"failed to {action} firewall state {path}: {exc.strerror}")


def _items_from_json(raw: list[Any]) -> tuple[Item, ...]:
    return tuple(tuple(item) for item in raw)


def _format_1_items(doc: dict[str, Any]) -> tuple[Item, ...]:
    """iptables chains and rules as format 1 kept them, as the iptables driver's items."""
    return (*(("chain", str(t), str(c)) for t, c in doc["chains"]),
            *(("rule", str(t), str(c), str(spec), bool(ins)) for t, c, spec, ins in doc["rules"]))


def _claim_to_json(claim: Claim) -> list[Any]:
    return [claim.protocol, claim.host_port, claim.host_ip]


def _attachment_to_json(att: Attachment) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "driver": att.driver,
        "network": att.network,
        "containerID": att.container_id,
        "ifname": att.ifname,
        "units": [{"unit": u.unit, "items": [list(i) for i in u.items], "shared": list(u.shared)}
                  for u in att.units],
        "claims": [_claim_to_json(c) for c in att.claims],
    }


def _attachment_from_json(doc: dict[str, Any]) -> Attachment:
    if doc.get("format", 1) == 1:
        units = tuple(Installed(str(f["family"]), _format_1_items(f), tuple(str(k) for k in f["shared"]))
                      for f in doc["families"])
    else:
        units = tuple(Installed(str(u["unit"]), _items_from_json(u["items"]), tuple(str(k) for k in u["shared"]))
                      for u in doc["units"])
    return Attachment(
        driver=str(doc.get("driver", _FORMAT_1_DRIVER)),
        network=str(doc["network"]),
        container_id=str(doc["containerID"]),
        ifname=str(doc["ifname"]),
        units=units,
        claims=tuple(Claim(str(p), int(n), str(ip)) for p, n, ip in doc["claims"]),
    )


def _temp_of(path: str) -> str:
    return path + _TEMP_SUFFIX


_UNKNOWN_BOOT = "unknown"


def current_generation() -> str:
    boot = current_boot_id() or _UNKNOWN_BOOT
    try:
        netns = os.stat("/proc/thread-self/ns/net").st_ino
    except OSError:
        netns = 0
    return f"{boot} {netns}"


def is_other_generation(recorded: str, current: str) -> bool:
    """True when the tables the records describe are certainly gone.

    Another namespace, or another boot when both boots are known. A boot that cannot be
    determined now or could not then is no evidence of a reboot (the IPAM store treats
    it alike, ipam/boot_scope.py), so the records stay.
    """
    recorded_boot, _, recorded_netns = recorded.partition(" ")
    boot, _, netns = current.partition(" ")
    if recorded_netns != netns:
        return True
    return _UNKNOWN_BOOT not in (recorded_boot, boot) and recorded_boot != boot


def _remove_tree(path: str) -> None:
    # shutil costs an import for a tree of small files two levels deep.
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _remove_tree(entry.path)
        else:
            os.unlink(entry.path)
    os.rmdir(path)


class Store:
    """The state directory, locked for the life of the ``with`` block."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock_fd = -1

    def __enter__(self) -> Store:
        try:
            os.makedirs(self.directory, mode=_DIR_MODE, exist_ok=True)
            fd = os.open(self._path("lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
        except OSError as exc:
            raise _error("open", self.directory, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise _error("lock", self.directory, exc) from None
        self._lock_fd = fd
        try:
            self._check_generation()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the only descriptor releases the flock
            self._lock_fd = -1

    def _path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def _check_generation(self) -> None:
        path = self._path("generation")
        current = current_generation()
        try:
            with open(path, encoding="utf-8") as f:
                recorded = f.read().strip()
        except FileNotFoundError:
            recorded = ""
        except OSError as exc:
            raise _error("read", path, exc) from None
        if recorded == current:
            return
        stale = bool(recorded) and is_other_generation(recorded, current)
        if recorded and not stale and current.startswith(_UNKNOWN_BOOT + " "):
            return  # keep the known boot recorded: it still decides at the next readable call
        try:
            if stale:
                for name in ("attachments", "shared", "ports"):
                    _remove_tree(self._path(name))
            self._write(path, (current + "\n").encode())
        except OSError as exc:
            raise _error("reset", self.directory, exc) from None

    @staticmethod
    def _write(path: str, data: bytes) -> None:
        """Replace a file atomically: readers see the old or the new content, never half.

        Every write happens under the flock, so one temp name per file suffices; a writer
        killed halfway leaves exactly `<path>.tmp`, which the next write replaces and the
        removal of `path` removes too (forget, drop_user)."""
        tmp = _temp_of(path)
        atomic_write.stage(tmp, data, _FILE_MODE)
        atomic_write.publish_replacing(tmp, path)

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    @staticmethod
    def _rmdir(path: str) -> None:
        try:
            os.rmdir(path)
        except (FileNotFoundError, OSError):
            pass  # not empty: another user or claim still lives there

    # --- attachments ----------------------------------------------------------------

    def remove_debris(self) -> None:
        """Remove every temp file writers killed halfway left (GC): the flock is held, so no
        write is in progress."""
        for top, _, files in os.walk(self.directory):
            for name in files:
                if name.endswith(_TEMP_SUFFIX):
                    try:
                        self._unlink(os.path.join(top, name))
                    except OSError as exc:
                        raise _error("remove", os.path.join(top, name), exc) from None

    def _attachment_path(self, key: str) -> str:
        return record_path(self.directory, key)

    def load(self, key: str) -> Attachment | None:
        path = self._attachment_path(key)
        try:
            with open(path, encoding="utf-8") as f:
                return _attachment_from_json(json.load(f))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _error("read", path, exc) from None
        except (ValueError, KeyError, TypeError, IndexError):
            raise CniError(FIREWALL_FAILURE, f"firewall state {path} is corrupt",
                           "remove the file; the removal fallback will then find rules by their comment") from None

    def save(self, att: Attachment) -> None:
        path = self._attachment_path(att.key)
        try:
            os.makedirs(os.path.dirname(path), mode=_DIR_MODE, exist_ok=True)
            self._write(path, json.dumps(_attachment_to_json(att), separators=(",", ":")).encode())
        except OSError as exc:
            raise _error("write", path, exc) from None

    def forget(self, key: str) -> None:
        try:
            self._unlink(self._attachment_path(key))
            self._unlink(_temp_of(self._attachment_path(key)))
        except OSError as exc:
            raise _error("remove", self._attachment_path(key), exc) from None

    def attachments(self) -> list[tuple[str, Attachment | None]]:
        """Every recorded attachment as (key, record); record None if unreadable (GC only)."""
        out: list[tuple[str, Attachment | None]] = []
        try:
            names = sorted(os.listdir(self._path("attachments")))
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise _error("list", self._path("attachments"), exc) from None
        for name in names:
            if not name.endswith(".json"):
                continue
            key = name[:-len(".json")]
            try:
                out.append((key, self.load(key)))
            except CniError:
                out.append((key, None))
        return out

    # --- shared resources -------------------------------------------------------------

    def _shared_dir(self, unit: str, key: str) -> str:
        # Keys hold a bridge name (no "/" in interface names) or a number; escaping "/"
        # anyway keeps a path component a path component.
        return self._path("shared", unit, key.replace("/", "%2F"))

    def other_users(self, unit: str, key: str, me: str) -> bool:
        """Whether an attachment other than `me` uses the shared resource."""
        mine = _USER_PREFIX + me
        try:
            with os.scandir(self._shared_dir(unit, key)) as entries:
                return any(e.name.startswith(_USER_PREFIX) and e.name != mine for e in entries)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _error("list", self._shared_dir(unit, key), exc) from None

    def users(self, unit: str, key: str) -> list[str]:
        try:
            names = os.listdir(self._shared_dir(unit, key))
        except FileNotFoundError:
            return []
        return [n[len(_USER_PREFIX):] for n in names if n.startswith(_USER_PREFIX)]

    def add_user(self, unit: str, resource: Shared, me: str, created: bool) -> None:
        directory = self._shared_dir(unit, resource.key)
        try:
            os.makedirs(directory, mode=_DIR_MODE, exist_ok=True)
            if created or not os.path.exists(os.path.join(directory, _DEF_NAME)):
                doc = {"format": _FORMAT, "key": resource.key, "items": [list(i) for i in resource.items]}
                self._write(os.path.join(directory, _DEF_NAME), json.dumps(doc, separators=(",", ":")).encode())
            os.close(os.open(os.path.join(directory, _USER_PREFIX + me),
                             os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE))
        except OSError as exc:
            raise _error("write", directory, exc) from None

    def definition(self, unit: str, key: str) -> Shared | None:
        """The resource as its creator recorded it: exactly the lines it added."""
        path = os.path.join(self._shared_dir(unit, key), _DEF_NAME)
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            items = _format_1_items(doc) if doc.get("format", 1) == 1 else _items_from_json(doc["items"])
            return Shared(str(doc["key"]), items)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None  # unreadable: the caller renders the definition from the key

    @staticmethod
    def _mtime_ns(path: str) -> int:
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return 0

    def defined_at(self, unit: str, key: str) -> int:
        """When a shared resource was created (its definition written), in ns; 0 if unknown.
        With recorded_at, the order restore replays the firewall's history in."""
        return self._mtime_ns(os.path.join(self._shared_dir(unit, key), _DEF_NAME))

    def recorded_at(self, key: str) -> int:
        """When an attachment was recorded (its ADD), in ns; 0 if unknown."""
        return self._mtime_ns(self._attachment_path(key))

    def drop_user(self, unit: str, key: str, me: str) -> None:
        directory = self._shared_dir(unit, key)
        try:
            self._unlink(os.path.join(directory, _USER_PREFIX + me))
            if not self.users(unit, key):
                self._unlink(os.path.join(directory, _DEF_NAME))
                self._unlink(_temp_of(os.path.join(directory, _DEF_NAME)))
                self._rmdir(directory)
        except OSError as exc:
            raise _error("update", directory, exc) from None

    def shared_resources(self) -> list[tuple[str, str]]:
        """Every (unit, key) with a directory (GC only)."""
        out: list[tuple[str, str]] = []
        try:
            units = sorted(os.listdir(self._path("shared")))
        except FileNotFoundError:
            return out
        for unit in units:
            try:
                names = sorted(os.listdir(self._path("shared", unit)))
            except OSError:
                continue
            out.extend((unit, name.replace("%2F", "/")) for name in names)
        return out

    # --- port claims ------------------------------------------------------------------

    def _port_dir(self, claim: Claim) -> str:
        return self._path("ports", f"{claim.protocol}-{claim.host_port}")

    def _holder(self, path: str) -> dict[str, str]:
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            return {k: str(doc[k]) for k in ("key", "network", "containerID", "ifname")}
        except (OSError, ValueError, KeyError, TypeError):
            return {"key": "", "network": "?", "containerID": "?", "ifname": "?"}

    def check_claims(self, claims: Iterable[Claim], me: str) -> None:
        """CniError(PORT_CONFLICT) naming the holder if another attachment publishes one of them."""
        for claim in claims:
            directory = self._port_dir(claim)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _error("list", directory, exc) from None
            for name in names:
                other = Claim(claim.protocol, claim.host_port, name)
                if other.family != claim.family:
                    continue
                if other.host_ip != claim.host_ip and not (other.wildcard or claim.wildcard):
                    continue
                holder = self._holder(os.path.join(directory, name))
                if holder["key"] in (me, ""):  # "": a claim a killed writer left unwritten
                    continue
                raise CniError(
                    PORT_CONFLICT,
                    f"host port {claim} is already published by container {holder['containerID']} "
                    f"(ifname {holder['ifname']}, network {holder['network']})",
                    f"conflicting claim: {other}")

    def take_claims(self, claims: Iterable[Claim], att: Attachment) -> None:
        doc = json.dumps({"key": att.key, "network": att.network, "containerID": att.container_id,
                          "ifname": att.ifname}).encode()
        temp = self._path("ports", _CLAIM_TEMP)
        for claim in claims:
            directory = self._port_dir(claim)
            path = os.path.join(directory, claim.host_ip)
            try:
                os.makedirs(directory, mode=_DIR_MODE, exist_ok=True)
                atomic_write.stage(temp, doc, _FILE_MODE)
                if atomic_write.publish_new(temp, path):
                    continue
                holder = self._holder(path)
                if holder["key"] == "":  # empty: a claim an older version left unwritten when killed
                    self._unlink(path)
                    if atomic_write.publish_new(temp, path):
                        continue
                    holder = self._holder(path)
            except OSError as exc:
                raise _error("write", path, exc) from None
            finally:
                # After a link the temp name is a second name of the claim: drop it now.
                with contextlib.suppress(OSError):
                    os.unlink(temp)
            if holder["key"] == att.key:
                continue  # ours already (a repeated ADD)
            raise CniError(PORT_CONFLICT,
                           f"host port {claim} is already published by container {holder['containerID']} "
                           f"(ifname {holder['ifname']}, network {holder['network']})")

    def release_claims(self, claims: Iterable[Claim], me: str) -> None:
        try:
            self._unlink(self._path("ports", _CLAIM_TEMP))  # a killed take_claims' (the flock is held)
        except OSError as exc:
            raise _error("remove", self._path("ports", _CLAIM_TEMP), exc) from None
        for claim in claims:
            path = os.path.join(self._port_dir(claim), claim.host_ip)
            try:
                if os.path.exists(path) and self._holder(path)["key"] in (me, ""):
                    self._unlink(path)
                self._rmdir(self._port_dir(claim))
            except OSError as exc:
                raise _error("remove", path, exc) from None

    def all_claims(self) -> list[tuple[Claim, dict[str, str]]]:
        """Every claim with its holder (GC only)."""
        out: list[tuple[Claim, dict[str, str]]] = []
        try:
            ports = sorted(os.listdir(self._path("ports")))
        except FileNotFoundError:
            return out
        for port_dir in ports:
            protocol, _, number = port_dir.partition("-")
            if not number.isdigit():
                continue
            try:
                names = sorted(os.listdir(self._path("ports", port_dir)))
            except OSError:
                continue
            for name in names:
                out.append((Claim(protocol, int(number), name), self._holder(self._path("ports", port_dir, name))))
        return out
