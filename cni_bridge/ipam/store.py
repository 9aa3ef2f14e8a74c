"""The host-local on-disk reservation store, byte-compatible with the reference.

Layout of `<dataDir>/<network>/`, as the reference (`backend/disk/backend.go`,
`lock.go`) writes it, so both implementations can share one directory:

- `lock`: empty file; every operation holds an exclusive flock on it.
- `<ip>`: one per reserved address, named like Go's net.IP.String(), holding
  `<containerID>\\r\\n<ifname>` with no trailing newline. Older reference versions
  wrote only `<containerID>`; such "legacy" files still count as that container's.
- `last_reserved_ip.<rangeSetIndex>`: the last address handed out from a set,
  used as the round-robin starting point.

Both kinds of file are written whole (cni_bridge/atomic_write.py) under the temporary name
`cni-bridge.tmp`, then linked (a reservation) or renamed (a hint) into place, so no reader,
ours or the reference's, ever sees a reservation half-written by a writer killed between
creating the file and writing it (the reference's way leaves an empty file, an address
reserved by nobody). The reference ignores the temp name where it looks for addresses (it
is not an IP) and, matching files by content on DEL, removes one holding its container's
key; ours is removed by the next reservation, DEL and GC.

A Store is not thread-safe: a plugin invocation is one process doing one command.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator

from .. import atomic_write
from ..errors import IPAM_STORE_FAILURE, CniError
from ..records import record
from .ranges import canonical_ip, ip_key

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    from .ranges import IPAddress

    Reservation: TypeAlias = tuple[IPAddress, str, str | None]

LOCK_NAME = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
# Every write is under the lock, so one temporary name serves them all.
TEMP_NAME = "cni-bridge.tmp"
# The separator between container ID and ifname inside a reservation file.
LINE_BREAK = "\r\n"

# 0755 for the directory and 0750 for the lock are what the reference creates
# (observed with containernetworking-plugins 1.1.1); matching them keeps a
# directory looking the same whichever implementation created it.
_DIR_MODE = 0o755
_LOCK_MODE = 0o750
# Reservation files hold container IDs; the reference moved to 0600 in 2023.
_FILE_MODE = 0o600

# (ip, container ID, ifname); ifname is None for a legacy ID-only file.


def ip_filename(ip: IPAddress) -> str:
    """The file name Go's net.IP.String() gives: dotted IPv4, RFC 5952 IPv6."""
    # Go prints an IPv4-mapped IPv6 address in dotted form; Python does not.
    return str(canonical_ip(ip))


def parse_ip_filename(name: str) -> IPAddress | None:
    """The address a directory entry reserves, or None if it is not a reservation."""
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return None
    # A non-canonical spelling is never written by either implementation, and
    # release(ip) would look under the canonical name and miss it.
    if ip_filename(ip) != name:
        return None
    return ip


def _store_error(path: str, action: str, exc: OSError) -> CniError:
    reason = exc.strerror or str(exc)
    return CniError(IPAM_STORE_FAILURE, f"host-local store: cannot {action} {path}: {reason}")


def _owner(content: str) -> tuple[str, str | None]:
    """(container ID, ifname) a reservation file's content names; ifname None in a legacy file.

    The file as the reference compares it: stripped of surrounding whitespace, nothing else, so
    an owner read here is one a DEL of that owner releases.
    """
    container_id, separator, ifname = content.strip().partition(LINE_BREAK)
    return (container_id, ifname) if separator else (container_id, None)


@record(frozen=True)
class _Entry:
    """A reservation file as read from disk."""

    name: str
    ip: IPAddress
    owner: tuple[str, str | None]  # _owner() of its content


class Store:
    """Reservations of one network under `<data_dir>/<network>/`."""

    def __init__(self, data_dir: str | os.PathLike[str], network: str) -> None:
        data_dir = os.fspath(data_dir)
        # Names are validated with the rest of the config, but a name that
        # escapes dataDir would let a request delete files elsewhere, so the
        # store refuses them again on its own.
        if not data_dir:
            raise CniError(IPAM_STORE_FAILURE, "host-local store: dataDir is empty")
        if network in ("", ".", "..") or "/" in network or "\0" in network:
            raise CniError(
                IPAM_STORE_FAILURE,
                f"host-local store: network name {network!r} cannot be used as a directory name",
            )
        self._dir = os.path.join(data_dir, network)
        self._lock_fd: int | None = None

    @property
    def directory(self) -> str:
        return self._dir

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the network's lock; re-entrant so operations can nest inside it.

        flock locks belong to an open file description, so a second open+flock
        in this process would deadlock against the first; nesting reuses it.
        """
        if self._lock_fd is not None:
            yield
            return
        try:
            os.makedirs(self._dir, mode=_DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise _store_error(self._dir, "create directory", exc) from exc
        lock_path = self._path(LOCK_NAME)
        try:
            fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, _LOCK_MODE)
        except OSError as exc:
            raise _store_error(lock_path, "open lock file", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            os.close(fd)
            raise _store_error(lock_path, "lock", exc) from exc
        self._lock_fd = fd
        try:
            yield
        finally:
            self._lock_fd = None
            # Closing the only descriptor releases the flock.
            os.close(fd)

    # -- reading ---------------------------------------------------------

    def _read(self, path: str) -> str | None:
        """File contents, or None if it vanished; O_NOFOLLOW keeps reads inside the dir."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _store_error(path, "open", exc) from exc
        try:
            chunks: list[bytes] = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        except OSError as exc:
            raise _store_error(path, "read", exc) from exc
        finally:
            os.close(fd)
        # surrogateescape keeps arbitrary bytes comparable without failing.
        return b"".join(chunks).decode("utf-8", errors="surrogateescape")

    def _regular_files(self, errors: list[CniError] | None = None) -> list[str]:
        """Names of the directory's regular files (not symlinks); none if it does not exist or
        is no directory. With errors given, a failure to list is reported there, not raised."""
        try:
            with os.scandir(self._dir) as it:
                return [e.name for e in it if e.is_file(follow_symlinks=False)]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            if errors is None:
                raise _store_error(self._dir, "list", exc) from exc
            errors.append(_store_error(self._dir, "list", exc))
            return []

    def _entries(self, errors: list[CniError] | None = None) -> list[_Entry]:
        """Every reservation file, sorted by address.

        With errors given, an unreadable file is reported there and skipped, so a
        sweep over the whole store can go on; otherwise the error is raised.
        """
        entries: list[_Entry] = []
        for name in self._regular_files(errors):
            ip = parse_ip_filename(name)
            if ip is None:
                continue
            try:
                content = self._read(self._path(name))
            except CniError as exc:
                if errors is None:
                    raise
                errors.append(exc)
                continue
            if content is not None:
                entries.append(_Entry(name, ip, _owner(content)))
        entries.sort(key=lambda e: ip_key(e.ip))
        return entries

    @staticmethod
    def _key(container_id: str, ifname: str) -> str:
        # The reference trims the ID when writing and when matching.
        return container_id.strip() + LINE_BREAK + ifname

    @staticmethod
    def _owners(container_id: str, ifname: str) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
        """The owners, as _owner() reads them, of (container_id, ifname)'s files: then legacy ones."""
        return (container_id.strip(), ifname), (container_id.strip(), None)

    def find_by_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Addresses reserved for (container_id, ifname), legacy ID-only files included.

        Every ADD runs this over every reservation of the network, so it reads each file
        and parses its name as an address only when the file is the owner's: the same
        answer as ``_entries``, in 60 % of its time with 300 reservations.
        """
        owners = self._owners(container_id, ifname)
        found: list[IPAddress] = []
        with self.lock():
            for name in self._regular_files():
                if name == LOCK_NAME or name.startswith(LAST_RESERVED_PREFIX):
                    continue
                try:
                    content = self._read(self._path(name))
                except CniError:
                    if parse_ip_filename(name) is None:
                        continue  # not a reservation: _entries would not have read it
                    raise
                if content is not None and _owner(content) in owners:
                    ip = parse_ip_filename(name)
                    if ip is not None:
                        found.append(ip)
        found.sort(key=ip_key)
        return found

    def all_reservations(self, errors: list[CniError] | None = None) -> list[Reservation]:
        """(ip, container ID, ifname or None for legacy files) for every reservation, by address."""
        with self.lock():
            return [(e.ip, *e.owner) for e in self._entries(errors)]

    def reservations_unlocked(self, errors: list[CniError]) -> list[Reservation]:
        """``all_reservations`` for a reader that must neither wait for the lock nor write
        anything (no directory, no lock file): ``cni-bridge list``.

        Safe without the lock because every file is written whole before it gets its name (a
        reservation linked, a hint renamed into place): a file is read whole, or it vanished
        meanwhile (a DEL) and is not there. A file that cannot be read, or a directory that
        cannot be listed, is reported in ``errors`` and skipped. The reference writes in place,
        so a reservation it is writing at that moment may read as empty: an address held by
        nobody, as its killed writer would leave it.
        """
        return [(e.ip, *e.owner) for e in self._entries(errors)]

    def last_reserved(self, range_index: int) -> IPAddress | None:
        """The round-robin hint for a range set; None when absent or unparsable."""
        with self.lock():
            content = self._read(self._path(f"{LAST_RESERVED_PREFIX}{range_index}"))
        if content is None:
            return None
        try:
            return canonical_ip(ipaddress.ip_address(content.strip()))
        except ValueError:
            # The reference ignores a garbled hint and starts from rangeStart.
            return None

    # -- writing ---------------------------------------------------------

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, range_index: int) -> bool:
        """Claim ip for (container_id, ifname); False if someone already holds it.

        link() makes the claim atomic even against a writer that ignores the lock, and the
        file complete from the moment it has its name. On success
        last_reserved_ip.<range_index> is updated, as the reference does.
        """
        path = self._path(ip_filename(ip))
        temp = self._path(TEMP_NAME)
        with self.lock():
            if os.path.lexists(path):  # taken: spare the write of a file that would not be linked
                return False
            try:
                atomic_write.stage(temp, self._key(container_id, ifname).encode("utf-8", "surrogateescape"),
                                   _FILE_MODE)
                if not atomic_write.publish_new(temp, path):
                    atomic_write.discard(temp)
                    return False
            except OSError as exc:
                raise _store_error(path, "create", exc) from exc
            try:
                self._write_last_reserved(ip, range_index)
            except CniError:
                self._unlink_quietly(path)
                raise
        return True

    def _write_last_reserved(self, ip: IPAddress, range_index: int) -> None:
        # Renamed into place: a rewrite in place (the reference's os.WriteFile) leaves an empty
        # hint when killed. Staging also removes the temp name the reservation was linked from.
        path = self._path(f"{LAST_RESERVED_PREFIX}{range_index}")
        temp = self._path(TEMP_NAME)
        try:
            atomic_write.stage(temp, ip_filename(ip).encode("ascii"), _FILE_MODE)
            atomic_write.publish_replacing(temp, path)
        except OSError as exc:
            self._unlink_quietly(temp)
            raise _store_error(path, "write", exc) from exc

    def remove_debris(self) -> None:
        """Remove what a writer killed halfway left: the temp file (never a reservation)."""
        with self.lock():
            self._unlink(TEMP_NAME)

    @staticmethod
    def _unlink_quietly(path: str) -> None:
        # Only used on a path that already failed; the first error is the one to report.
        with contextlib.suppress(OSError):
            os.unlink(path)

    def _unlink(self, name: str) -> bool:
        path = self._path(name)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _store_error(path, "remove", exc) from exc
        return True

    def release(self, ip: IPAddress) -> bool:
        """Drop the reservation of ip whoever holds it; False if there was none."""
        with self.lock():
            return self._unlink(ip_filename(ip))

    def release_by_owner(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Drop every reservation of (container_id, ifname); returns what was released.

        As in the reference, legacy ID-only files are released only when no
        current-format file matched: a legacy file cannot say which interface
        it belongs to, and when this interface's files are found by name the
        ID-only ones are more likely another interface's.
        """
        owner, legacy = self._owners(container_id, ifname)
        released: list[IPAddress] = []
        with self.lock():
            self.remove_debris()
            entries = self._entries()
            matched = [e for e in entries if e.owner == owner]
            if not matched:
                matched = [e for e in entries if e.owner == legacy]
            for e in matched:
                if self._unlink(e.name):
                    released.append(e.ip)
        return released

    def __repr__(self) -> str:
        return f"Store({self._dir!r})"

