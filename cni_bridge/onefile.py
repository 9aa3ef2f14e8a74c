"""The single-file executable: the launcher of ``launcher.sh`` followed by the bundle as a tar archive.

Build time: ``python -m cni_bridge.onefile pack BUNDLE_DIR OUTPUT`` writes ``dist/cni-bridge``
from the one-folder bundle (``./build.sh`` runs it). Run time: the launcher extracts the bundle
once per build and host into ``<cache>/<hash>/`` and then always runs it from there;
``cni-bridge prune-bundles`` removes extractions of other builds that nothing uses any more
(the launcher runs it after each extraction). ``install_cni`` reads the launcher's header to
recognise the file as ours.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import time

from . import PLUGIN_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

DEFAULT_CACHE_DIR = "/var/lib/cni-bridge/bundles"
CACHE_DIR_VARIABLE = "CNI_BRIDGE_CACHE_DIR"
# Set by the launcher for `install-cni` only: the file to install is the one that was started.
LAUNCHER_VARIABLE = "CNI_BRIDGE_LAUNCHER"
SIGNATURE = b"#!/bin/sh\n# cni-bridge launcher, format 1."
HEADER_LIMIT = 16384
BUNDLE_NAME_LENGTH = 16
BUNDLE_NAME = re.compile(rf"[0-9a-f]{{{BUNDLE_NAME_LENGTH}}}")
LAST_START = ".last-start"
LOCK = ".lock"
TEMP_PREFIX = ".tmp-"      # an extraction in progress (the launcher's)
RETIRED_PREFIX = ".old-"   # an extraction being removed
# An extraction of another build is removed only if no process runs from it and nothing started
# it for this long: a build installed side by side and used daily is never extracted twice.
KEEP_AFTER_LAST_START_SECONDS = 24 * 3600
LOCK_WAIT_SECONDS = 120.0
SAFE_PATH = re.compile(r"/[A-Za-z0-9/._-]*")


# --- the header ------------------------------------------------------------------------------

class Header:
    """What the launcher of a single file says about its payload."""

    def __init__(self, sha256: str, offset: int, default_cache_dir: str) -> None:
        self.sha256 = sha256
        self.offset = offset
        self.default_cache_dir = default_cache_dir

    @property
    def bundle_name(self) -> str:
        """The name of its extraction in the cache."""
        return self.sha256[:BUNDLE_NAME_LENGTH]


def read_header(path: str) -> Header | None:
    """The header of a cni-bridge single file; None for any other file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(HEADER_LIMIT)
    except OSError:
        return None
    if not head.startswith(SIGNATURE):
        return None
    text = head.decode("ascii", errors="replace")
    sha = re.search(r"^payload_sha256=([0-9a-f]{64})$", text, re.MULTILINE)
    offset = re.search(r"^payload_offset=([0-9]+)$", text, re.MULTILINE)
    cache = re.search(r"^cache=\$\{" + CACHE_DIR_VARIABLE + r":-([^}\n]*)\}$", text, re.MULTILINE)
    if not (sha and offset and cache):
        return None
    return Header(sha.group(1), int(offset.group(1)), cache.group(1))


def _template() -> str:
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.sh"), encoding="ascii") as handle:
        return handle.read()


def render_header(template: str, sha256: str, payload_size: int, default_cache_dir: str) -> bytes:
    """The launcher with its fields filled in; payload_offset is its own length, found by
    iterating (the length depends on the digits of the offset)."""
    if not SAFE_PATH.fullmatch(default_cache_dir):
        raise ValueError(f"default cache dir {default_cache_dir!r}: an absolute path of letters, digits, '/._-'")
    fields = {"@PAYLOAD_SHA256@": sha256, "@BUNDLE_NAME@": sha256[:BUNDLE_NAME_LENGTH],
              "@PAYLOAD_SIZE_MB@": str(max(1, round(payload_size / 2**20))), "@DEFAULT_CACHE_DIR@": default_cache_dir}
    for field, value in fields.items():
        template = template.replace(field, value)
    offset = 0
    while True:
        header = template.replace("@PAYLOAD_OFFSET@", str(offset)).encode("ascii")
        if len(header) == offset:
            return header
        offset = len(header)


# --- packing (build time) ----------------------------------------------------------------------

def _entries(directory: str) -> Iterator[str]:
    """Every path below directory, relative, parents before children, in byte order."""
    for root, dirs, files in os.walk(directory):
        dirs.sort(key=os.fsencode)
        for name in sorted(dirs + files, key=os.fsencode):
            yield os.path.relpath(os.path.join(root, name), directory)


def archive(bundle_dir: str) -> bytes:
    """The bundle as a tar archive that depends on names, kinds, modes and contents only (owner
    root, time 0), so an unchanged bundle gives the same bytes and the same cache entry."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for relative in sorted(_entries(bundle_dir), key=os.fsencode):
            info = tar.gettarinfo(os.path.join(bundle_dir, relative), arcname=relative)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            if info.isfile():
                with open(os.path.join(bundle_dir, relative), "rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    return buffer.getvalue()


def write_single_file(output: str, header: bytes, payload: bytes) -> None:
    """Written under a temp name, then renamed: a reader sees the old file or the new one."""
    temp = os.path.join(os.path.dirname(os.path.abspath(output)), f".{os.path.basename(output)}.tmp")
    with open(temp, "wb") as handle:
        handle.write(header)
        handle.write(payload)
        os.fchmod(handle.fileno(), 0o755)
    os.replace(temp, output)


def pack(bundle_dir: str, output: str, default_cache_dir: str = DEFAULT_CACHE_DIR) -> Header:
    """dist/cni-bridge from dist/cni-bridge.d."""
    import hashlib

    if not os.access(os.path.join(bundle_dir, PLUGIN_NAME), os.X_OK):
        raise ValueError(f"{bundle_dir} is not a one-folder bundle: it has no executable {PLUGIN_NAME}")
    payload = archive(bundle_dir)
    sha256 = hashlib.sha256(payload).hexdigest()
    header = render_header(_template(), sha256, len(payload), default_cache_dir)
    write_single_file(output, header, payload)
    return Header(sha256, len(header), default_cache_dir)


def payload_of(path: str) -> bytes:
    header = read_header(path)
    if header is None:
        raise ValueError(f"{path} is not a {PLUGIN_NAME} single file")
    with open(path, "rb") as handle:
        handle.seek(header.offset)
        return handle.read()


def repack(source: str, output: str, default_cache_dir: str) -> Header:
    """The same payload under a launcher with another default cache directory (for packagers
    whose hosts keep state elsewhere, and for tests, which must not use the host's cache)."""
    payload = payload_of(source)
    header = read_header(source)
    assert header is not None
    rendered = render_header(_template(), header.sha256, len(payload), default_cache_dir)
    write_single_file(output, rendered, payload)
    return Header(header.sha256, len(rendered), default_cache_dir)


# --- pruning the cache (run time) -------------------------------------------------------------

def _last_start(extraction: str) -> float:
    """When a launcher last started this extraction (the directory's mtime if never)."""
    for path in (os.path.join(extraction, LAST_START), extraction):
        try:
            return os.stat(path).st_mtime
        except FileNotFoundError:
            continue
    return 0.0


def processes_running_from(directory: str) -> list[int]:
    """PIDs whose executable lies inside directory (a renamed directory shows its new name)."""
    prefix = directory.rstrip("/") + "/"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                exe = os.readlink(f"/proc/{entry}/exe")
            except OSError:  # gone, or a kernel thread
                continue
            if exe.startswith(prefix):
                pids.append(int(entry))
    return pids


class _CacheLock:
    """The launcher's lock (flock on <cache>/.lock): extractions and pruning take turns."""

    def __init__(self, cache_dir: str) -> None:
        self.path = os.path.join(cache_dir, LOCK)
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    raise TimeoutError(f"{self.path} has been locked for {LOCK_WAIT_SECONDS:g} s") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _in_use(extraction: str, now: float) -> str:
    """Why extraction must stay ('' if nothing uses it)."""
    users = processes_running_from(extraction)
    if users:
        return f"process {', '.join(map(str, users))} runs from it"
    age = now - _last_start(extraction)
    if age < KEEP_AFTER_LAST_START_SECONDS:
        return f"last started {age / 3600:.1f} h ago"
    return ""


def _retire(cache_dir: str, name: str, now: float) -> str:
    """Remove one extraction unless something uses it; returns what happened, one line.

    It is renamed first, so no launcher starts it any more (a launcher that finds it gone
    extracts again), then checked again: a launcher that had just recorded its start, or a
    process that had just started from it, keeps it, and it is renamed back.
    """
    path = os.path.join(cache_dir, name)
    why = _in_use(path, now)
    if why:
        return f"kept {path}: {why}"
    retired = os.path.join(cache_dir, f"{RETIRED_PREFIX}{name}.{os.getpid()}")
    os.rename(path, retired)
    why = _in_use(retired, time.time())
    if why:
        os.rename(retired, path)  # nothing can have taken the name: extractions wait for the lock
        return f"kept {path}: {why}"
    shutil.rmtree(retired)
    return f"removed {path}"


def prune(cache_dir: str, keep: str) -> list[str]:
    """Remove extractions of builds other than `keep` that nothing uses, and what killed
    launchers and pruners left behind. Returns what was done, one line per entry."""
    lines = []
    now = time.time()
    with _CacheLock(cache_dir):
        for name in sorted(os.listdir(cache_dir)):
            path = os.path.join(cache_dir, name)
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            if name.startswith(TEMP_PREFIX):  # the lock is ours, so no extraction is running
                shutil.rmtree(path)
                lines.append(f"removed {path} (an interrupted extraction)")
            elif name.startswith(RETIRED_PREFIX):
                if not processes_running_from(path):
                    shutil.rmtree(path)
                    lines.append(f"removed {path}")
            elif BUNDLE_NAME.fullmatch(name) and name != keep:
                lines.append(_retire(cache_dir, name, now))
    return lines


def _running_extraction() -> str:
    """The cache entry this process runs from ('' when it does not run from one)."""
    directory = os.path.dirname(os.path.realpath(sys.executable))
    name = os.path.basename(directory)
    return name if getattr(sys, "frozen", False) and BUNDLE_NAME.fullmatch(name) else ""


PRUNE_HELP = f"""\
usage: {PLUGIN_NAME} prune-bundles [CACHE_DIR]

Removes from CACHE_DIR (default ${CACHE_DIR_VARIABLE}, else {DEFAULT_CACHE_DIR}) the
extractions of other builds of {PLUGIN_NAME} that no process runs from and that no launcher
started in the last {KEEP_AFTER_LAST_START_SECONDS // 3600} hours, and what interrupted extractions left. The
launcher runs it after each extraction; run it by hand to free the space sooner.
"""


def run_prune(argv: list[str], environ: dict[str, str]) -> int:
    if argv[:1] in (["-h"], ["--help"]) or len(argv) > 1:
        (sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr).write(PRUNE_HELP)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    cache_dir = argv[0] if argv else environ.get(CACHE_DIR_VARIABLE) or DEFAULT_CACHE_DIR
    if not os.path.isdir(cache_dir):
        sys.stdout.write(f"{PLUGIN_NAME} prune-bundles: {cache_dir} does not exist; nothing to do\n")
        return 0
    try:
        lines = prune(cache_dir, _running_extraction())
    except (OSError, TimeoutError) as error:
        sys.stderr.write(f"{PLUGIN_NAME} prune-bundles: {error}\n")
        return 1
    for line in lines:
        sys.stdout.write(f"{PLUGIN_NAME} prune-bundles: {line}\n")
    return 0


# --- build-time command line -------------------------------------------------------------------

BUILD_USAGE = """\
usage: python -m cni_bridge.onefile pack BUNDLE_DIR OUTPUT [--default-cache-dir DIR]
       python -m cni_bridge.onefile repack SINGLE_FILE OUTPUT --default-cache-dir DIR
"""


def build_main(argv: list[str]) -> int:
    positional: list[str] = []
    cache: str | None = None
    rest = iter(argv)
    for arg in rest:
        if arg == "--default-cache-dir":
            cache = next(rest, None) or ""
        else:
            positional.append(arg)
    if len(positional) != 3 or positional[0] not in ("pack", "repack") or cache == "" \
            or (positional[0] == "repack" and cache is None):
        sys.stderr.write(BUILD_USAGE)
        return 2
    command, source, output = positional
    try:
        make = pack if command == "pack" else repack
        header = make(source, output, cache or DEFAULT_CACHE_DIR)
    except (OSError, ValueError) as error:
        sys.stderr.write(f"onefile: {error}\n")
        return 1
    size = os.path.getsize(output)
    sys.stdout.write(f"{output}: {size / 2**20:.1f} MB, bundle {header.bundle_name}, "
                     f"launcher {header.offset} bytes, cache {header.default_cache_dir}\n")
    return 0


if __name__ == "__main__":
    sys.exit(build_main(sys.argv[1:]))
