"""End to end with containerd 1.6.20 (Debian 12) and ``ctr run --cni``: the built plugin as the
network of a containerd container.

Each test starts its own containerd (config with ``version = 2``, ``root``, ``state`` and
``[grpc] address`` in a temp dir; no systemd), imports a locally built OCI image of a busybox
root file system (tests/oci_image.py; no registry is reachable) and runs containers with
``ctr run --rm --cni --runc-binary /usr/sbin/runc``. ctr itself runs the CNI plugins (libcni
inside the ctr process), so ctr runs in a throwaway node network namespace (tests/plugin.py)
and the bridge, the host veths and every iptables rule live there, never on the real host.

Proved here: the container's eth0 has an address of the conflist's subnet, the MTU of the
node's uplink and the default route via the gateway; it pings the gateway and a second
container on the bridge; while it runs, the IPAM store holds its reservation, the stateDir
its attachment record, the node its host veth and iptables rules, and libcni its cached
result; when ``ctr run --rm`` returns, ctr has run DEL (with an empty CNI_NETNS: the
container's namespace is gone by then) and none of these is left, whether the command exited
0, exited 3, or the task was killed with SIGKILL from another ctr.

Where Debian's ctr 1.6.20 looks (found with a conflist naming a missing plugin type, and
strace): it loads the first file (alphabetical) of /etc/cni/net.d; it searches plugins in
``[/opt/cni/bin /usr/lib/cni]`` (go-cni's default, patched by Debian to add /usr/lib/cni);
libcni caches each result in /var/lib/cni/results/``<network>-<CNI container ID>-<ifname>``
where the CNI container ID is ``<containerd namespace>-<container ID>``. ``ctr run`` has no
option for any of the three (nor does the containerd config: that is the CRI plugin's).

How the test keeps containerd and ctr off the real host (each point found by running it):

- Nothing is written to the host's /etc/cni, /opt/cni or /var/lib/cni: every ctr runs in a
  private mount namespace (``ip netns exec NODE unshare --mount --propagation private``) in
  which test-owned directories are bind-mounted on /etc/cni/net.d (holding only our
  ``00-cbt-<hex>.conflist``), on /opt/cni/bin (the first plugin directory: the symlink
  ``cni-bridge`` -> ``$CNI_BRIDGE_BIN`` plus symlinks to the reference plugins) and on
  /var/lib/cni (libcni's cache). To have mount points without creating them on the host,
  /etc, /opt and /var/lib first get an overlay of themselves (upper dir in the temp root)
  in that namespace. The binding must not sit on a host directory: removing a mount point
  (another runtime's test removing /var/lib/cni, say) detaches the mounts on it in every
  namespace: seen here, libcni then failed to delete its cached result on DEL, and its next
  ADD would have recreated the host's directory.
  These mounts vanish with ctr, a killed test leaves nothing in the host's CNI directories,
  and no other runtime ever sees our conflist.
- containerd runs with ``nsenter --net=NODE`` (not ``ip netns exec``, which remounts /sys
  and hides the cgroup mounts runc needs) in a private mount namespace of its own, where
  /run/containerd (hard-coded in 1.6 for the shims' sockets ``s/<hash>`` and runc's root
  ``runc/<namespace>``, whatever ``state`` says) is a temp dir; its snapshot and rootfs
  mounts stay in that namespace. The ``opt`` plugin (it creates /opt/containerd) and the
  CRI plugin are disabled. ctr gets ``--fifo-dir`` (else /run/containerd/fifo).
- Containers run in a unique containerd namespace; runc's cgroups ``/<namespace>/<id>`` in
  every hierarchy are removed at the end.
- The finalizer, also on failure, each step whatever the previous ones did: EOF to running
  ``ctr run`` processes (a holding container exits, ctr runs DEL), then kills them; kills
  and deletes every task and container of the namespace; stops containerd (SIGTERM, then
  SIGKILL; it also gets SIGTERM if the test process dies); kills any process left whose
  command line names the temp root (shims) or whose cgroup is in our namespace (containers)
  and waits until PID 1 has reaped them; removes the cgroups; unmounts anything under the
  temp root and deletes it. Then it checks the host (``HostState``, ``entries_named``).
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests.oci_image import write_oci_archive
from tests.plugin import BIN, PATH, REF_DIR, SKIP_REASON, Node, node, reservations, token  # noqa: F401
from tests.rootfs import busybox_unavailable_reason, make_busybox_rootfs

CONTAINERD = shutil.which("containerd", path=PATH)
CTR = shutil.which("ctr", path=PATH)
SHIM = shutil.which("containerd-shim-runc-v2", path=PATH)
RUNC = "/usr/sbin/runc"
NSENTER = shutil.which("nsenter", path=PATH)
UNSHARE = shutil.which("unshare", path=PATH)

# What Debian's ctr 1.6.20 uses, none of it configurable from ctr (see the module docstring).
CONF_DIR = "/etc/cni/net.d"
PLUGIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
CACHE_DIR = "/var/lib/cni"
RUN_DIR = "/run/containerd"  # containerd 1.6: shim sockets and runc root, whatever `state` says

TIMEOUT = 60.0


def _skip_reason() -> str | None:
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


_SKIP = _skip_reason()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

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

def _mount_points() -> list[str]:
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
        return cls(listings, tuple(sorted(p for p in _mount_points() if cls.watched_mount(p))))


def entries_named(tokens: tuple[str, ...], dirs: tuple[str, ...] = OWN_DIRS + SHARED_DIRS) -> list[str]:
    """Paths in ``dirs`` on the real host whose name contains one of ``tokens``."""
    return [os.path.join(d, name) for d in dirs if os.path.isdir(d)
            for name in sorted(os.listdir(d)) if any(t in name for t in tokens)]


# --- containerd and ctr ---------------------------------------------------------------------

@dataclass
class Network:
    """A cni-bridge network list as ctr will load it."""

    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    data_dir: str
    state_dir: str
    log_file: str

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",  # the newest version ctr 1.6's libcni knows
            "name": self.name,
            "plugins": [{
                "type": "cni-bridge",
                "bridge": self.bridge,
                "isGateway": True,
                "ipMasq": True,
                "stateDir": self.state_dir,
                "logFile": self.log_file,
                "logLevel": "info",
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.data_dir,
                    "ranges": [[{"subnet": str(self.subnet), "gateway": str(self.gateway)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            }],
        }


class CtrRun:
    """A ``ctr run`` in the foreground; its stdout is read as it comes."""

    def __init__(self, proc: subprocess.Popen[bytes], cid: str, err_path: str) -> None:
        self.proc = proc
        self.cid = cid  # the CNI container ID: <containerd namespace>-<container ID>
        self.err_path = err_path
        self.out = b""

    @property
    def stderr(self) -> str:
        try:
            with open(self.err_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def read_until(self, marker: str, timeout: float = TIMEOUT) -> str:
        """The container's output up to and including the line ``marker``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        wanted = f"{marker}\n".encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {marker!r} from the container within {timeout}s; output: "
                                     f"{self.out.decode(errors='replace')!r}; ctr stderr: {self.stderr!r}")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    rc = self.proc.wait(timeout=TIMEOUT)
                    raise AssertionError(f"ctr exited (rc={rc}) before {marker!r}; output: "
                                         f"{self.out.decode(errors='replace')!r}; ctr stderr: {self.stderr!r}")
                self.out += chunk
        return self.out[: self.out.index(wanted) + len(wanted)].decode(errors="replace")

    def finish(self, line: str | None = "go", timeout: float = TIMEOUT) -> tuple[int, str]:
        """Send ``line`` to the container's stdin (then EOF); wait for ctr; (rc, all output)."""
        data = f"{line}\n".encode() if line is not None and self.proc.stdin is not None else None
        rest, _ = self.proc.communicate(input=data, timeout=timeout)
        self.out += rest or b""
        return self.proc.returncode, self.out.decode(errors="replace")


class Containerd:
    """A containerd of this test, in the node's network namespace, and ctr to drive it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.root = tempfile.mkdtemp(prefix="cbt-ctrd-")
        self.namespace = f"cbt-{token(4)}"
        self.socket = os.path.join(self.root, "containerd.sock")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.tokens: tuple[str, ...] = (self.namespace, os.path.basename(self.root))  # + network names
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

    def _redirected(self, targets: list[tuple[str, str, str]], argv: list[str]) -> list[str]:
        """``unshare`` + the redirect script for (target, source, anchor) triples, then ``argv``."""
        specs = [item for target, src, anchor in targets for item in (target, src, self._scratch_dir(), anchor)]
        return [str(UNSHARE), "--mount", "--propagation", "private", "--", "sh", "-c", _REDIRECT, "sh",
                *specs, "--", *argv]

    def _ctr_argv(self, *args: str) -> list[str]:
        """ctr in the node network namespace, seeing our conflist, plugins and cache."""
        targets = [(CONF_DIR, self.conf_dir, "/etc"), (PLUGIN_DIRS[0], self.bin_dir, "/opt"),
                   (CACHE_DIR, self.cache_dir, "/var/lib")]
        ctr = [str(CTR), "--address", self.socket, "--namespace", self.namespace, *args]
        return ["ip", "netns", "exec", self.node.name, *self._redirected(targets, ctr)]

    def start(self) -> None:
        config = os.path.join(self.root, "config.toml")
        with open(config, "w", encoding="utf-8") as handle:
            handle.write(f"""version = 2
root = "{self.root}/root"
state = "{self.root}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "{self.socket}"
""")
        argv = [str(NSENTER), f"--net=/run/netns/{self.node.name}", "--",
                *self._redirected([(RUN_DIR, os.path.join(self.root, "run-containerd"), "/run")],
                                  [str(CONTAINERD), "--config", config])]
        with open(os.path.join(self.root, "containerd.log"), "wb") as log:
            self.daemon = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           env={"PATH": PATH}, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.daemon.poll() is not None:
                raise AssertionError(f"containerd exited with {self.daemon.returncode}: {self.log()}")
            if os.path.exists(self.socket):
                version = self.ctr("version", check=False, timeout=10)
                if version.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"containerd did not answer within {TIMEOUT}s: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        try:
            with open(os.path.join(self.root, "containerd.log"), encoding="utf-8", errors="replace") as handle:
                return handle.read()[-4000:]
        except OSError:
            return ""

    def ctr(self, *args: str, check: bool = True, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self._ctr_argv(*args), capture_output=True, text=True, timeout=timeout,
                              env={"PATH": PATH}, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def import_busybox(self) -> str:
        """Build the busybox image and import it; returns its name."""
        rootfs = make_busybox_rootfs(os.path.join(self.root, "rootfs"))
        archive = os.path.join(self.root, "image.tar")
        tag = token(3)
        write_oci_archive(rootfs, archive, tag=tag)
        image = f"docker.io/local/cbt-busybox-{token(4)}:{tag}"
        self.ctr("images", "import", "--index-name", image, archive)
        listed = self.ctr("images", "list", "-q").stdout.split()
        assert image in listed, f"imported image {image} not listed: {listed}"
        return image

    def run(self, image: str, name: str, script: str, stdin: bool = True) -> CtrRun:
        """``ctr run --rm --cni IMAGE NAME sh -c SCRIPT`` in the foreground."""
        err_path = os.path.join(self.root, f"ctr-run-{name}.err")
        argv = self._ctr_argv("run", "--rm", "--cni", "--fifo-dir", os.path.join(self.root, "fifo"),
                              "--runc-binary", RUNC, image, name, "sh", "-c", script)
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, env={"PATH": PATH}, bufsize=0,
                                    start_new_session=True)
        self.procs.append(proc)
        return CtrRun(proc, f"{self.namespace}-{name}", err_path)

    # --- clean-up -----------------------------------------------------------------------------

    def _our_pids(self) -> list[int]:
        """Processes of this test's containerd: any whose command line names the temp root
        (containerd, its shims, ctr) and any in a cgroup of our namespace (containers)."""
        found = []
        needle = self.root.encode()
        cgroup = f"/{self.namespace}/"
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

    def _cgroup_dirs(self) -> list[str]:
        """runc's cgroup parent /<namespace> in every hierarchy (v1 controllers, unified)."""
        base = "/sys/fs/cgroup"
        if not os.path.isdir(base):
            return []
        hierarchies = [base] + [os.path.join(base, h) for h in sorted(os.listdir(base))]
        return [os.path.join(h, self.namespace) for h in hierarchies
                if not os.path.islink(h) and os.path.isdir(os.path.join(h, self.namespace))]

    def cleanup(self) -> list[str]:
        """Stop and remove everything, each step whatever the previous ones did; returns
        what could not be cleaned."""
        problems: list[str] = []
        for step in (self._end_ctr_runs, self._delete_containers, self._stop_daemon, self._kill_leftovers,
                     self._remove_cgroups, self._remove_root):
            try:
                problems += step()
            except Exception as exc:  # noqa: BLE001 - the next steps must run
                problems.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
        return problems

    def _end_ctr_runs(self) -> list[str]:
        """ctr run still in the foreground: EOF on its stdin lets a holding container finish
        (ctr then runs DEL); one that does not is killed."""
        for proc in self.procs:
            if proc.poll() is None and proc.stdin is not None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:
                        pass
        return []

    def _delete_containers(self) -> list[str]:
        """Every task (killed) and container of our namespace."""
        if self.daemon is None or self.daemon.poll() is not None:
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
        while pids := self._our_pids():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                alive = [pid for pid in pids if not _zombie(pid)]
                return [f"processes of the test's containerd survive SIGKILL: {alive}"] if alive else []
            time.sleep(0.05)
        return []

    def _remove_cgroups(self) -> list[str]:
        """runc's cgroups /<namespace>/<id>, deepest first (runc removes <id> when it deletes a
        container; a cgroup whose last process is not reaped yet stays busy for a moment)."""
        deadline = time.monotonic() + 20
        while True:
            failures = []
            for top in self._cgroup_dirs():
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
        inside = [p for p in _mount_points() if p == self.root or p.startswith(self.root + "/")]
        for point in sorted(inside, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        problems = [f"mounts were visible under {self.root} on the host: {inside}"] if inside else []
        still = [p for p in _mount_points() if p == self.root or p.startswith(self.root + "/")]
        if still:
            return problems + [f"cannot unmount {still}; {self.root} is left for inspection"]
        shutil.rmtree(self.root, ignore_errors=True)
        return problems


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (kept across exec), so a
    killed test run does not leave containerd running."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone


@pytest.fixture
def containerd(node: Node) -> Iterator[Containerd]:  # noqa: F811
    """A running containerd of this test in the node namespace; everything it made is
    removed afterwards, also on failure, and the host's CNI and containerd directories and
    mounts are checked to be as they were."""
    before = HostState.take()
    daemon = Containerd(node)
    problems: list[str] = []
    try:
        daemon.start()
        yield daemon
    finally:
        problems = daemon.cleanup()
    after = HostState.take()
    assert not problems, "clean-up failed:\n" + "\n".join(problems)
    assert after == before, f"the host changed:\nbefore: {before}\nafter:  {after}"
    assert entries_named(daemon.tokens) == [], f"entries of this test on the host: {entries_named(daemon.tokens)}"
    assert not daemon._cgroup_dirs(), f"cgroups left: {daemon._cgroup_dirs()}"


# --- what the tests look at ---------------------------------------------------------------------

def make_network(node: Node, ctrd: Containerd) -> Network:  # noqa: F811
    subnet = ipaddress.IPv4Network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
    net = Network(name=node.net_name(), bridge=node.bridge_name(), subnet=subnet, data_dir=node.data_dir(),
                  state_dir=node.state_dir, log_file=os.path.join(node.temp_dir(), "plugin.log"))
    path = os.path.join(ctrd.conf_dir, f"00-cbt-{token(4)}.conflist")
    ctrd.tokens += (net.name, os.path.basename(path))
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(net.conflist(), handle)
    return net


_INET = re.compile(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)")
_MTU = re.compile(r"eth0(?:@\S+)?: <[^>]*> mtu (\d+)")

# The container's report: its eth0 (address, MTU), its routes, a ping to each TARGET (up to
# three echo requests: one lost packet is not a datapath failure); then "READY". With HOLD it
# waits for a line on stdin before it exits with EXIT.
_REPORT = """
echo ADDR-BEGIN; ip -4 addr show dev eth0; ip link show dev eth0; ip -4 route; echo ADDR-END
for target in {targets}; do
    result=FAIL
    for try in 1 2 3; do
        if ping -c1 -W1 "$target" >/dev/null 2>&1; then result=OK; break; fi
    done
    echo "PING-$result $target"
done
echo READY
{hold}
echo BYE
exit {exit}
"""


def report_script(*targets: object, hold: bool, exit_code: int = 0) -> str:
    return _REPORT.format(targets=" ".join(str(t) for t in targets), hold="read line" if hold else "",
                          exit=exit_code)


@dataclass
class Seen:
    """What the container reported about its network."""

    address: ipaddress.IPv4Interface
    mtu: int
    text: str  # the output of ip addr, ip link and ip route
    pings: dict[str, bool]


def parse_report(text: str) -> Seen:
    block = text.split("ADDR-BEGIN", 1)[1].split("ADDR-END", 1)[0]
    found = _INET.findall(block)
    assert len(found) == 1, f"expected one IPv4 address on the container's eth0: {block!r}"
    mtu = _MTU.search(block)
    assert mtu, f"no MTU for eth0 in {block!r}"
    pings = {m.group(2): m.group(1) == "OK" for m in re.finditer(r"PING-(OK|FAIL) (\S+)", text)}
    return Seen(ipaddress.IPv4Interface(f"{found[0][0]}/{found[0][1]}"), int(mtu.group(1)), block, pings)


def node_rules(node: Node, needle: str) -> list[str]:  # noqa: F811
    """Lines of the node's iptables-save (both backends, both families) containing ``needle``."""
    lines = []
    for tool in ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save"):
        if shutil.which(tool, path=PATH) is None:
            continue
        out = node.sh(tool, check=False).stdout
        lines += [f"{tool}: {line}" for line in out.splitlines() if needle in line]
    return lines


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


def cache_file(ctrd: Containerd, net: Network, cid: str) -> str:
    """Where libcni (in ctr) caches the result: <cache>/results/<network>-<container ID>-<ifname>."""
    return os.path.join(ctrd.cache_dir, "results", f"{net.name}-{cid}-eth0")


def assert_attached(node: Node, ctrd: Containerd, net: Network, run: CtrRun, seen: Seen) -> None:  # noqa: F811
    """While the container runs: everything ADD made is there and names this container."""
    ip = str(seen.address.ip)
    cid = run.cid
    # The IPAM store holds the reservation: file <ip> containing "<container ID>\r\n<ifname>".
    store = reservations(net.data_dir, net.name)
    assert ip in store, f"no reservation for {ip} in {net.data_dir}: {store}"
    assert store[ip].splitlines() == [cid, "eth0"], f"reservation {ip}: {store[ip]!r}"
    # The host veth, on the bridge.
    veth = host_veth_name(net.name, cid, "eth0")
    node.host_veths.add(veth)
    link = node.link(veth)
    assert link is not None and link.get("master") == net.bridge, f"host veth {veth}: {link}"
    # Its masquerade rules, and its record in the stateDir.
    assert node_rules(node, f"id={cid} if=eth0"), "no iptables rule names the container"
    assert records_naming(net.state_dir, cid), f"no attachment record names {cid}"
    # libcni's cached result, in the test's cache dir (ctr's view of /var/lib/cni).
    path = cache_file(ctrd, net, cid)
    assert os.path.isfile(path), f"libcni cached no result at {path}: {os.listdir(ctrd.cache_dir)}"
    with open(path, encoding="utf-8") as handle:
        cached = json.load(handle)
    assert cached.get("containerId") == cid and cached.get("networkName") == net.name, cached
    assert f"{ip}/{net.subnet.prefixlen}" in [a["address"] for a in cached["result"]["ips"]], cached
    # The plugin logged its ADD for this container.
    with open(net.log_file, encoding="utf-8") as handle:
        log = handle.read()
    assert f"ADD {net.name}/{cid}: attached eth0 ({ip}/{net.subnet.prefixlen})" in log, log


def assert_detached(node: Node, ctrd: Containerd, net: Network, run: CtrRun) -> None:  # noqa: F811
    """After ``ctr run`` returned: DEL ran, nothing of the container is left."""
    cid = run.cid
    assert "network review" not in run.stderr, f"ctr reported a failed CNI DEL: {run.stderr}"
    # libcni deletes its cached result only after a successful DEL; ctr (go-cni) says nothing
    # of a DEL error that contains "not found", or "no such file or directory" (no netns).
    assert not os.path.exists(cache_file(ctrd, net, cid)), (
        f"libcni's cached result was not removed, so DEL failed; plugin log:\n{_read(net.log_file)}\n"
        f"ctr stderr:\n{run.stderr}")
    assert not [ip for ip, owner in reservations(net.data_dir, net.name).items() if cid in owner], \
        f"reservation of {cid} left: {reservations(net.data_dir, net.name)}"
    veth = host_veth_name(net.name, cid, "eth0")
    assert node.link(veth) is None, f"host veth {veth} left in the node"
    assert node_rules(node, f"id={cid} ") == [], "iptables rules of the container left"
    assert records_naming(net.state_dir, cid) == [], f"attachment record of {cid} left"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError as exc:
        return f"({path}: {exc.strerror})"


def assert_host_untouched(ctrd: Containerd, running: bool = False) -> None:
    """The real host's CNI and containerd directories never saw our conflist, plugin link,
    cached results or shim sockets (ctr and containerd saw test-owned directories there)."""
    assert entries_named(ctrd.tokens) == [], f"on the real host: {entries_named(ctrd.tokens)}"
    shim_dir = os.path.join(ctrd.root, "run-containerd", "s")
    shims = os.listdir(shim_dir) if os.path.isdir(shim_dir) else []
    assert shims or not running, "a container runs, but no shim socket is in the test's /run/containerd"
    assert not os.path.isdir(f"{RUN_DIR}/s") or not set(os.listdir(f"{RUN_DIR}/s")) & set(shims), \
        "a shim socket of the test on the real host"


# --- the tests -----------------------------------------------------------------------------------

def test_ctr_run_cni_container_gets_its_network_from_cni_bridge_and_del_releases_it(
        node: Node, containerd: Containerd) -> None:  # noqa: F811
    # An uplink carrying the node's default route: the plugin gives the veths its MTU.
    node.add_uplink("cbtup0", 1400, "198.51.100.1/24", "198.51.100.2")
    image = containerd.import_busybox()
    net = make_network(node, containerd)

    run = containerd.run(image, f"c-{token(3)}", report_script(net.gateway, hold=True))
    seen = parse_report(run.read_until("READY"))

    # What the container sees: an address of the subnet (not the gateway), the uplink's MTU,
    # the default route via the gateway, and the gateway answers.
    assert seen.address.network == net.subnet, f"{seen.address} is not in {net.subnet}"
    assert seen.address.ip != net.gateway
    assert seen.mtu == 1400, f"container MTU {seen.mtu}, the node's uplink has 1400"
    assert f"default via {net.gateway} dev eth0" in seen.text, seen.text
    assert seen.pings == {str(net.gateway): True}, f"the container cannot ping the gateway: {run.out!r}"
    # And the node reaches the container.
    assert any(node.ping(None, str(seen.address.ip)) for _ in range(3)), \
        f"the node cannot ping the container at {seen.address.ip}"
    assert_attached(node, containerd, net, run, seen)
    assert_host_untouched(containerd, running=True)

    rc, out = run.finish()
    assert rc == 0, f"ctr run exited with {rc}: {out!r}; stderr {run.stderr!r}"
    assert out.rstrip().endswith("BYE"), out
    assert_detached(node, containerd, net, run)
    # --rm: container and task are gone; the last attachment took the shared rules with it.
    assert containerd.ctr("containers", "list", "-q").stdout.split() == []
    assert containerd.ctr("tasks", "list", "-q").stdout.split() == []
    assert node_rules(node, "cni-bridge") == [], "rules of cni-bridge left after its last attachment"
    left = [v for v in node.veths() if not v.startswith("cbtup0")]  # the uplink may be a veth pair
    assert left == [], f"veths left in the node: {left}"
    assert_host_untouched(containerd)


def test_ctr_run_cni_two_containers_on_the_bridge_del_after_a_failing_command_and_a_kill(
        node: Node, containerd: Containerd) -> None:  # noqa: F811
    image = containerd.import_busybox()
    net = make_network(node, containerd)

    first = containerd.run(image, f"a-{token(3)}", report_script(net.gateway, hold=True))
    seen_first = parse_report(first.read_until("READY"))
    assert seen_first.pings == {str(net.gateway): True}, first.out
    assert_attached(node, containerd, net, first, seen_first)

    # A second container gets another address, reaches the first across the bridge and exits 3.
    second = containerd.run(image, f"b-{token(3)}", report_script(net.gateway, seen_first.address.ip,
                                                                  hold=False, exit_code=3), stdin=False)
    rc, out = second.finish(line=None)
    assert rc == 3, f"ctr run should pass the container's exit code 3 on, got {rc}: {out!r} {second.stderr!r}"
    seen_second = parse_report(out)
    assert seen_second.address.network == net.subnet
    assert seen_second.address.ip not in (seen_first.address.ip, net.gateway), (seen_first, seen_second)
    assert seen_second.pings == {str(net.gateway): True, str(seen_first.address.ip): True}, out
    # DEL ran for the second (its command failed) and left the first alone.
    assert_detached(node, containerd, net, second)
    assert_attached(node, containerd, net, first, seen_first)
    assert list(reservations(net.data_dir, net.name)) == [str(seen_first.address.ip)]
    assert_host_untouched(containerd, running=True)

    # The first is killed from outside (SIGKILL to its task): ctr run returns 128+9 and DELs.
    containerd.ctr("tasks", "kill", "--signal", "SIGKILL", first.cid.removeprefix(f"{containerd.namespace}-"))
    rc, out = first.finish(line=None)
    assert rc == 137, f"ctr run exited with {rc}, not 137 (SIGKILL): {out!r}; stderr {first.stderr!r}"
    assert "BYE" not in out, out
    assert_detached(node, containerd, net, first)
    assert reservations(net.data_dir, net.name) == {}
    assert node_rules(node, "cni-bridge") == [], "rules of cni-bridge left after its last attachment"
    assert_host_untouched(containerd)
