"""Reservations scoped to a boot: what an earlier boot reserved is released in a later one.

Containers do not survive a reboot, but their reservation files do; a runtime that
does not call GC (or lost its own state) would leak them until the range is full.

The store is shared with the reference host-local, which knows nothing of boots and
may reserve addresses after a reboot before cni-bridge runs at all. So "older than
this boot" cannot be read from the files' times against the kernel's boot time (a
clock set late at boot, as on hosts without an RTC, would make the reference's fresh
files look old), and a reservation is released only on evidence that it existed
during an earlier boot:

- `cni-bridge.boot` beside the reservations holds the boot ID it was written in. It
  is written at the first ADD, GC or STATUS of each boot and left alone until the
  next boot; its mtime, as the filesystem stored it, is that boot's *mark*.
- Every reservation file known to exist during a boot gets the mark as its mtime:
  those made by our ADD right away, the ones found at the boot's first call, and
  the ones the reference made meanwhile at each GC and STATUS.
- The first call of a later boot releases every reservation whose mtime is still the
  recorded mark, then writes the record anew and marks what is left, which exists
  during the new boot.

A reservation made in the new boot cannot carry the old mark: our own get the new
mark, and the reference's get their creation time, which would have to equal the
old boot's mark to the filesystem's last digit. Anything that changed a file's mtime
(an operator's touch, a copy) only makes it look unknown, and unknown files are
kept and marked, so they are released one boot later. When the boot cannot be
determined, nothing is released, marked or recorded.

Byte compatibility: reservation contents are never touched, only their mtime. The
reference walks every file of the directory on DEL (and when looking for a
container's reservations) and compares each one's trimmed content with
`<id>\\r\\n<ifname>` or `<id>`: the record's content, "cni-bridge boot <uuid>",
holds spaces, which no container ID may, so it never matches and is never removed.
Its name is not an address, so the allocator never takes it for a reservation, and
it does not start with `last_reserved_ip.`.

Cost in the same boot: an ADD opens and reads the record (one fstat, one small read)
and sets the mtime of the files it creates; nothing is listed.
"""

from __future__ import annotations

import contextlib
import os

from .. import atomic_write
from ..boot import current_boot_id
from ..errors import IPAM_STORE_FAILURE, CniError
from .store import TEMP_NAME, Store, ip_filename, parse_ip_filename

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .ranges import IPAddress

RECORD_NAME = "cni-bridge.boot"
_RECORD_PREFIX = "cni-bridge boot "
_RECORD_MODE = 0o644  # a boot ID is no secret; operators may read it


def _error(path: str, action: str, exc: OSError) -> CniError:
    return CniError(IPAM_STORE_FAILURE, f"host-local store: cannot {action} {path}: {exc.strerror or exc}")


def _read_record(path: str) -> tuple[str | None, int | None]:
    """(recorded boot ID, mark): (None, None) without a record, (None, mark) if unparsable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise _error(path, "open", exc) from None
    try:
        mark = os.fstat(fd).st_mtime_ns
        raw = os.read(fd, 256)
    except OSError as exc:
        raise _error(path, "read", exc) from None
    finally:
        os.close(fd)
    text = raw.decode("ascii", errors="replace")
    if not text.startswith(_RECORD_PREFIX) or not text.endswith("\n"):
        return None, mark
    return text[len(_RECORD_PREFIX):-1], mark


def _write_record(path: str, boot: str) -> int:
    """Record the boot, whole or not at all (staged under the store's temp name, which the
    store's lock makes ours); returns the new mark (the record's mtime as stored)."""
    temp = os.path.join(os.path.dirname(path), TEMP_NAME)
    try:
        atomic_write.stage(temp, f"{_RECORD_PREFIX}{boot}\n".encode("ascii"), _RECORD_MODE)
        atomic_write.publish_replacing(temp, path)
        return os.stat(path, follow_symlinks=False).st_mtime_ns
    except OSError as exc:
        raise _error(path, "write", exc) from None


def _reservation_times(store: Store) -> list[tuple[IPAddress, str, int]]:
    """(ip, path, mtime) of every reservation file; symlinks and directories are not ones."""
    out: list[tuple[IPAddress, str, int]] = []
    try:
        with os.scandir(store.directory) as it:
            for entry in it:
                ip = parse_ip_filename(entry.name)
                if ip is None:
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    out.append((ip, entry.path, entry.stat(follow_symlinks=False).st_mtime_ns))
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _error(store.directory, "list", exc) from None
    return out


def _mark(path: str, mark: int) -> None:
    # Best effort: a file left unmarked is only kept one boot longer.
    with contextlib.suppress(OSError):
        os.utime(path, ns=(mark, mark), follow_symlinks=False)


def settle(store: Store, *, mark_unknown: bool = False, errors: list[CniError] | None = None) -> int | None:
    """Release what an earlier boot reserved; returns this boot's mark (None: unknown boot).

    Called under the store's lock. With mark_unknown (GC, STATUS: they read the whole
    store anyway) files without the mark, which the reference made, get it now.
    A reservation that cannot be released is reported in errors and stays, as it would
    have without boot scoping: it must not make every ADD of the boot fail.
    """
    boot = current_boot_id()
    if boot is None:
        return None
    path = os.path.join(store.directory, RECORD_NAME)
    recorded, old_mark = _read_record(path)
    if recorded == boot and old_mark is not None:
        if mark_unknown:
            for _, file, mtime in _reservation_times(store):
                if mtime != old_mark:
                    _mark(file, old_mark)
        return old_mark
    survivors: list[str] = []
    for ip, file, mtime in _reservation_times(store):
        # Without a readable record of another boot nothing is known to be old.
        if recorded is not None and mtime == old_mark:
            try:
                store.release(ip)
                continue
            except CniError as exc:
                if errors is not None:
                    errors.append(exc)
        survivors.append(file)  # marked as this boot's: the next boot tries again
    mark = _write_record(path, boot)
    for file in survivors:
        _mark(file, mark)
    return mark


def mark_reserved(store: Store, ips: Iterable[IPAddress], mark: int | None) -> None:
    """Give the boot's mark to reservations this boot just made."""
    if mark is None:
        return
    for ip in ips:
        _mark(os.path.join(store.directory, ip_filename(ip)), mark)
