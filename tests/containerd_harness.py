"""A containerd 1.6 (Debian 12) of one test, started by hand inside a throwaway node network
namespace and kept off the real host; shared by tests/integration/test_containerd.py
(``ctr run --cni``), tests/integration/test_cri.py and tests/cri_bench.py (the CRI plugin).

How containerd is kept off the real host (each point found by running it here):

- containerd runs with ``nsenter --net=NODE`` (not ``ip netns exec``, which remounts /sys
  and hides the cgroup mounts runc needs) in a private mount namespace of its own, where
  /run/containerd (hard-coded in 1.6 for the shims' sockets ``s/<hash>`` and runc's root
  ``runc/<namespace>``, whatever ``state`` says) is a temp dir; its snapshot and rootfs
  mounts stay in that namespace. Its config (``version = 2``) puts ``root``, ``state`` and
  the socket in the same temp dir, and disables the ``opt`` plugin (it creates
  /opt/containerd).
- ctr gets the same treatment: every ctr runs in a private mount namespace
  (``ip netns exec NODE unshare --mount --propagation private``) in which test-owned
  directories are bind-mounted on /etc/cni/net.d, /opt/cni/bin and /var/lib/cni (``ctr run
  --cni`` reads and writes there and has no option to change it).
- A directory is redirected without creating a mount point on the host: its parent that
  always exists (/etc, /opt, /var/lib, /run) first gets an overlay of itself (upper dir in
  the temp root), the mount point is made in that overlay, then the test's directory is
  bound on it. The binding must not sit on a host directory: removing a mount point
  (another runtime's test removing /var/lib/cni, say) detaches the mounts on it in every
  namespace: seen here, libcni then failed to delete its cached result on DEL, and its
  next ADD would have recreated the host's directory. These mounts vanish with the
  processes, so a killed test leaves nothing in the host's directories.
- Containers run with a test-owned cgroup parent (the ctr namespace for ``ctr run``, which
  puts runc's cgroups at ``/<namespace>/<id>``; the pod's ``cgroup_parent`` for the CRI);
  it is removed from every hierarchy at the end.
- The clean-up, also on failure, each step whatever the previous ones did: the subclass's
  own steps (end ``ctr run`` processes, stop and remove pods), then kill and delete every
  task and container of the namespace; stop containerd (SIGTERM, then SIGKILL; it also
  gets SIGTERM if the test process dies); kill any process left whose command line names
  the temp root (shims) or whose cgroup is under our cgroup parent (containers), and wait
  until PID 1 has reaped them; remove the cgroups; unmount anything under the temp root
  and delete it. ``guarded`` then checks the host (``HostState``, ``entries_named``).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from tests.oci_image import write_oci_archive
from tests.plugin import BIN, PATH, REF_DIR, SKIP_REASON, Node, token
from tests.polling import has_exited
from tests.rootfs import busybox_unavailable_reason

CONTAINERD = shutil.which("containerd", path=PATH)
CTR = shutil.which("ctr", path=PATH)
SHIM = shutil.which("containerd-shim-runc-v2", path=PATH)
RUNC = "/usr/sbin/runc"
NSENTER = shutil.which("nsenter", path=PATH)
UNSHARE = shutil.which("unshare", path=PATH)

# What Debian's ctr 1.6.20 uses, none of it configurable from ctr; the CRI plugin's libcni
# caches its results in CACHE_DIR too.
CONF_DIR = "/etc/cni/net.d"
PLUGIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
CACHE_DIR = "/var/lib/cni"
RUN_DIR = "/run/containerd"  # containerd 1.6: shim sockets and runc root, whatever `state` says

TIMEOUT = 60.0

# Plugins never needed here: `opt` creates /opt/containerd; the snapshotters only log errors.
UNUSED_PLUGINS = ("io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
                  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
                  "io.containerd.snapshotter.v1.zfs")


def skip_reason() -> str | None:
    """Why containerd cannot be run here (None if it can)."""
    if SKIP_REASON is not None:
        return SKIP_REASON
    for name, path in (("containerd", CONTAINERD), ("ctr", CTR), ("containerd-shim-runc-v2", SHIM)):
        if path is None:
            return f"{name} is not installed (Debian package containerd)"
    if not os.access(RUNC, os.X_OK):
        return f"{RUNC} is missing (Debian package runc)"
    if NSENTER is None or UNSHARE is None:
        return "nsenter or unshare is missing (util-linux)"
    if shutil.which("iptables-save", path=PATH) is None:
        return "iptables is not installed (Debian package iptables)"
    missing = [d for d in ("/etc", "/opt", "/var/lib", "/run") if not os.path.isdir(d)]
    if missing:
        return f"{missing} missing: the test overlays them in private mount namespaces"
    return busybox_unavailable_reason()


# Run in a fresh mount namespace: make each TARGET show the directory SRC, then exec the
# command. Arguments: TARGET SRC SCRATCH ANCHOR ... -- COMMAND... ANCHOR (a parent of TARGET
# that always exists: /etc, /opt, /var/lib, /run) first gets an overlay of itself with upper
# and work dir in SCRATCH; TARGET is created in that overlay if missing, then SRC is bound
# on it. So the host's file system is never written, and the binding does not depend on a
# host directory that another process could remove meanwhile (removing a mount point in
# one namespace detaches the mounts on it in all others).
_REDIRECT = r"""
set -eu
redirect() {
    target=$1 src=$2 scratch=$3 anchor=$4
    if [ ! -d "$anchor" ]; then
        echo "cannot redirect $target: $anchor does not exist" >&2
        exit 125
    fi
    mkdir -p "$scratch/upper" "$scratch/work"
    mount -t overlay overlay -o "lowerdir=$anchor,upperdir=$scratch/upper,workdir=$scratch/work" "$anchor"
    mkdir -p "$target"
    mount --bind "$src" "$target"
}
while [ "$1" != "--" ]; do
    redirect "$1" "$2" "$3" "$4"
    shift 4
done
shift
exec "$@"
"""


# --- the host state the test must not change ------------------------------------------------

def mount_points() -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [line.split()[4].replace("\\040", " ") for line in handle]


def _listing(path: str) -> str:
    return "\n".join(sorted(os.listdir(path))) if os.path.isdir(path) else "absent"


# Compared whole: directories only containerd or ctr (or a failed redirection) would fill.
OWN_DIRS = ("/etc/cni", CONF_DIR, "/opt/cni", *PLUGIN_DIRS, RUN_DIR, "/opt/containerd", "/var/lib/containerd")
# Shared with other runtimes (podman's libcni caches its results there too, and may create or
# remove the directories meanwhile): only entries named after this test's networks and
# containerd namespace count.
SHARED_DIRS = (CACHE_DIR, f"{CACHE_DIR}/results", f"{CACHE_DIR}/networks")


@dataclass(frozen=True)
class HostState:
    """What containerd and ctr could change on the real host if a redirection failed: the
    CNI directories, containerd's default directories, and the mounts on, under or above them."""

    listings: tuple[tuple[str, str], ...]
    mounts: tuple[str, ...]

    @staticmethod
    def watched_mount(point: str) -> bool:
        return any(point == d or point.startswith(d + "/") or d.startswith(point.rstrip("/") + "/")
                   for d in OWN_DIRS + SHARED_DIRS)

    @classmethod
    def take(cls) -> HostState:
        listings = tuple((d, _listing(d)) for d in OWN_DIRS)
        return cls(listings, tuple(sorted(p for p in mount_points() if cls.watched_mount(p))))


def entries_named(tokens: tuple[str, ...], dirs: tuple[str, ...] = OWN_DIRS + SHARED_DIRS) -> list[str]:
    """Paths in ``dirs`` on the real host whose name contains one of ``tokens``."""
    return [os.path.join(d, name) for d in dirs if os.path.isdir(d)
            for name in sorted(os.listdir(d)) if any(t in name for t in tokens)]


# --- reading the node ----------------------------------------------------------------------------

def node_rules(node: Node, needle: str) -> list[str]:
    """Lines of the node's firewall containing ``needle``: iptables-save of both flavours and
    families, and nft's ruleset (the nftables backend's elements carry the same comments)."""
    lines = []
    for tool in ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save"):
        if shutil.which(tool, path=PATH) is None:
            continue
        out = node.sh(tool, check=False).stdout
        lines += [f"{tool}: {line}" for line in out.splitlines() if needle in line]
    if shutil.which("nft", path=PATH) is not None:
        out = node.sh("nft", "list", "ruleset", check=False).stdout
        lines += [f"nft: {line.strip()}" for line in out.splitlines() if needle in line]
    return lines


def nft_tables(node: Node) -> list[str]:
    """The node's nftables tables (``nft list tables``), iptables-nft's own included."""
    if shutil.which("nft", path=PATH) is None:
        return []
    return node.sh("nft", "list", "tables", check=False).stdout.split("\n")


def records_naming(state_dir: str, cid: str) -> list[str]:
    """Attachment records of the plugin's stateDir that name the container."""
    directory = os.path.join(state_dir, "attachments")
    if not os.path.isdir(directory):
        return []
    named = []
    for entry in sorted(os.listdir(directory)):
        with open(os.path.join(directory, entry), encoding="utf-8", errors="replace") as handle:
            if cid in handle.read():
                named.append(entry)
    return named


def read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        return f"({path}: {exc.strerror})"


# --- the daemon ----------------------------------------------------------------------------------

class ContainerdDaemon:
    """A containerd of this test, in the node's network namespace, and ctr to drive it.

    ``namespace`` is the containerd namespace ctr works in; ``cgroup_parent`` the cgroup
    (in every hierarchy) under which its containers run. Subclasses add to the config
    (``extra_config``), to the daemon's redirections and to the clean-up."""

    def __init__(self, node: Node, namespace: str | None = None, cgroup_parent: str | None = None) -> None:
        self.node = node
        self.root = tempfile.mkdtemp(prefix="cbt-ctrd-")
        self.namespace = namespace or f"cbt-{token(4)}"
        self.cgroup_parent = cgroup_parent or self.namespace
        self.socket = os.path.join(self.root, "containerd.sock")
        self.daemon: subprocess.Popen[bytes] | None = None
        # Names whose appearance on the real host means a leak (+ network names, pod IDs).
        self.tokens: tuple[str, ...] = (os.path.basename(self.root), self.cgroup_parent)
        if self.namespace not in self.tokens and namespace is None:
            self.tokens += (self.namespace,)
        self._scratch = 0
        for sub in ("root", "state", "run-containerd", "fifo", "mnt", "net.d", "cni-bin", "cni-cache"):
            os.makedirs(os.path.join(self.root, sub))
        self.conf_dir = os.path.join(self.root, "net.d")
        self.bin_dir = os.path.join(self.root, "cni-bin")
        self.cache_dir = os.path.join(self.root, "cni-cache")
        os.symlink(os.path.abspath(BIN), os.path.join(self.bin_dir, "cni-bridge"))
        if os.path.isdir(REF_DIR):
            for name in sorted(os.listdir(REF_DIR)):
                os.symlink(os.path.join(REF_DIR, name), os.path.join(self.bin_dir, name))

    # --- processes ----------------------------------------------------------------------------

    def _scratch_dir(self) -> str:
        self._scratch += 1
        return os.path.join(self.root, "mnt", str(self._scratch))

    def redirected(self, targets: list[tuple[str, str, str]], argv: list[str]) -> list[str]:
        """``unshare`` + the redirect script for (target, source, anchor) triples, then ``argv``."""
        specs = [item for target, src, anchor in targets for item in (target, src, self._scratch_dir(), anchor)]
        return [str(UNSHARE), "--mount", "--propagation", "private", "--", "sh", "-c", _REDIRECT, "sh",
                *specs, "--", *argv]

    def ctr_argv(self, *args: str) -> list[str]:
        """ctr in the node network namespace, seeing our conflist, plugins and cache."""
        targets = [(CONF_DIR, self.conf_dir, "/etc"), (PLUGIN_DIRS[0], self.bin_dir, "/opt"),
                   (CACHE_DIR, self.cache_dir, "/var/lib")]
        ctr = [str(CTR), "--address", self.socket, "--namespace", self.namespace, *args]
        return ["ip", "netns", "exec", self.node.name, *self.redirected(targets, ctr)]

    def disabled_plugins(self) -> tuple[str, ...]:
        return UNUSED_PLUGINS + ("io.containerd.grpc.v1.cri",)

    def extra_config(self) -> str:
        """TOML appended to the config (plugin sections)."""
        return ""

    def daemon_redirects(self) -> list[tuple[str, str, str]]:
        """(target, source, anchor) directories containerd sees in its mount namespace."""
        return [(RUN_DIR, os.path.join(self.root, "run-containerd"), "/run")]

    def start(self) -> None:
        config = os.path.join(self.root, "config.toml")
        disabled = ", ".join(f'"{p}"' for p in self.disabled_plugins())
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"""version = 2
root = "{self.root}/root"
state = "{self.root}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{self.socket}"
{self.extra_config()}""")
        argv = [str(NSENTER), f"--net=/run/netns/{self.node.name}", "--",
                *self.redirected(self.daemon_redirects(), [str(CONTAINERD), "--config", config])]
        with open(os.path.join(self.root, "containerd.log"), "wb") as log:
            self.daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           env={"PATH": PATH, **self.node.helper_env()}, start_new_session=True,
                                           preexec_fn=_die_with_parent)
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.daemon.poll() is not None:
                raise AssertionError(f"containerd exited with {self.daemon.returncode}: {self.log()}")
            if os.path.exists(self.socket) and self.answers():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"containerd did not answer within {TIMEOUT}s: {self.log()}")
            time.sleep(0.02)

    def answers(self) -> bool:
        """Whether the daemon serves its API yet."""
        return self.ctr("version", check=False, timeout=10).returncode == 0

    def log(self, tail: int = 4000) -> str:
        return read_text(os.path.join(self.root, "containerd.log"))[-tail:]

    def ctr(self, *args: str, check: bool = True, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.ctr_argv(*args), capture_output=True, text=True, timeout=timeout,
                              env={"PATH": PATH}, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def import_image(self, rootfs: str, name: str, cmd: tuple[str, ...] = ("/bin/sh",)) -> str:
        """Build an OCI image of ``rootfs`` (default command ``cmd``) and import it as ``name``
        (``registry/repository:tag``) into our namespace; returns ``name``."""
        repository, tag = name.rsplit(":", 1)
        archive = os.path.join(self.root, f"image-{token(3)}.tar")
        write_oci_archive(rootfs, archive, tag=tag, cmd=cmd)
        # The archive's manifest carries the bare tag; --base-name makes that <repository>:<tag>
        # (without it ctr adds an image "import-<date>:<tag>" too, which the CRI plugin then
        # resolves as docker.io/library/import-...).
        self.ctr("images", "import", "--base-name", repository, archive)
        os.unlink(archive)
        listed = self.ctr("images", "list", "-q").stdout.split()
        assert name in listed and not [n for n in listed if n.startswith("import-")], \
            f"imported image {name}, listed: {listed}"
        return name

    # --- clean-up -----------------------------------------------------------------------------

    def our_pids(self) -> list[int]:
        """Processes of this test's containerd: any whose command line names the temp root
        (containerd, its shims, ctr) and any in a cgroup under our parent (containers)."""
        found = []
        needle = self.root.encode()
        cgroup = f"/{self.cgroup_parent}/"
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    cmdline = handle.read()
                with open(f"/proc/{entry}/cgroup", encoding="utf-8", errors="replace") as handle:
                    cgroups = handle.read()
            except OSError:
                continue
            if needle in cmdline or cgroup in cgroups:
                found.append(int(entry))
        return found

    def cgroup_dirs(self) -> list[str]:
        """Our cgroup parent in every hierarchy (v1 controllers, unified)."""
        base = "/sys/fs/cgroup"
        if not os.path.isdir(base):
            return []
        hierarchies = [base] + [os.path.join(base, h) for h in sorted(os.listdir(base))]
        return [os.path.join(h, self.cgroup_parent) for h in hierarchies
                if not os.path.islink(h) and os.path.isdir(os.path.join(h, self.cgroup_parent))]

    def cleanup_steps(self) -> list[Callable[[], list[str]]]:
        """What runs while the daemon still answers, before it is stopped."""
        return [self._delete_containers]

    def cleanup(self) -> list[str]:
        """Stop and remove everything, each step whatever the previous ones did; returns
        what could not be cleaned."""
        problems: list[str] = []
        for step in (*self.cleanup_steps(), self._stop_daemon, self._kill_leftovers, self._remove_cgroups,
                     self._remove_root):
            try:
                problems += step()
            except Exception as exc:  # noqa: BLE001 - the next steps must run
                problems.append(f"{getattr(step, '__name__', step)}: {type(exc).__name__}: {exc}")
        return problems

    def running(self) -> bool:
        return self.daemon is not None and self.daemon.poll() is None

    def _delete_containers(self) -> list[str]:
        """Every task (killed) and container of our namespace."""
        if not self.running():
            return []
        for task in self.ctr("tasks", "list", "-q", check=False, timeout=30).stdout.split():
            self.ctr("tasks", "delete", "--force", task, check=False, timeout=30)
        for container in self.ctr("containers", "list", "-q", check=False, timeout=30).stdout.split():
            self.ctr("containers", "delete", container, check=False, timeout=30)
        return []

    def _stop_daemon(self) -> list[str]:
        if self.daemon is None or self.daemon.poll() is not None:
            return []
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait(timeout=15)
            return [f"containerd ignored SIGTERM for 15 s: killed; log: {self.log()}"]
        return []

    def _kill_leftovers(self) -> list[str]:
        """Shims and container processes left. A killed one stays a zombie (still in its
        cgroup) until PID 1, its new parent, reaps it: wait for that too."""
        deadline = time.monotonic() + 20
        while pids := self.our_pids():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                alive = [pid for pid in pids if not has_exited(pid)]
                return [f"processes of the test's containerd survive SIGKILL: {alive}"] if alive else []
            time.sleep(0.05)
        return []

    def _remove_cgroups(self) -> list[str]:
        """The cgroups under our parent, deepest first (runc removes a container's own when
        it deletes the container; a cgroup whose last process is not reaped yet stays busy
        for a moment)."""
        deadline = time.monotonic() + 20
        while True:
            failures = []
            for top in self.cgroup_dirs():
                for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                    try:
                        os.rmdir(dirpath)
                    except OSError as exc:
                        failures.append(f"cannot remove cgroup {dirpath}: {exc.strerror}")
            if not failures or time.monotonic() > deadline:
                return failures
            time.sleep(0.1)

    def _remove_root(self) -> list[str]:
        """Unmount anything under the temp root (nothing is expected there: the mounts live in
        private namespaces), then delete it."""
        inside = [p for p in mount_points() if p == self.root or p.startswith(self.root + "/")]
        for point in sorted(inside, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        problems = [f"mounts were visible under {self.root} on the host: {inside}"] if inside else []
        still = [p for p in mount_points() if p == self.root or p.startswith(self.root + "/")]
        if still:
            return problems + [f"cannot unmount {still}; {self.root} is left for inspection"]
        shutil.rmtree(self.root, ignore_errors=True)
        return problems


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (kept across exec), so a
    killed test run does not leave containerd running."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


Daemon = TypeVar("Daemon", bound=ContainerdDaemon)


@contextmanager
def guarded(daemon: Daemon) -> Iterator[Daemon]:
    """Clean ``daemon`` up at the end, also on failure, then check that it left nothing on
    the host: the CNI and containerd directories and mounts as they were, no entry named
    after the test, no cgroup. The daemon is started by the caller."""
    before = HostState.take()
    problems: list[str] = []
    try:
        yield daemon
    finally:
        problems = daemon.cleanup()
    after = HostState.take()
    assert not problems, "clean-up failed:\n" + "\n".join(problems)
    assert after == before, f"the host changed:\nbefore: {before}\nafter:  {after}"
    assert entries_named(daemon.tokens) == [], f"entries of this test on the host: {entries_named(daemon.tokens)}"
    assert not daemon.cgroup_dirs(), f"cgroups left: {daemon.cgroup_dirs()}"
