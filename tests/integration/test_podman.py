"""End to end with podman 4.3.1 (Debian 12) and its CNI backend: the built plugin as a runtime uses it.

One network list of type ``cni-bridge`` (``ipMasq``, ``capabilities.portMappings``, dual
stack, IPAM dataDir and stateDir in temp dirs) in a test-owned ``--cni-config-dir``;
containers run from a busybox root file system (``--rootfs``, no registry needed) with
runc. podman runs inside a throwaway node network namespace wired to an "outside" host
(tests/traffic.py's Lab, 198.51.100.0/24 and 2001:db8:1::/64), so the bridge, the host
veths and every iptables rule live there, never on the real host.

Proved here: a container gets addresses from the conflist's subnets; a second container
reaches it; the outside host sees the node's uplink address (masquerade); a port
published with ``-p HOSTPORT:80`` (busybox httpd) answers through 127.0.0.1 and the node's
own addresses, from the outside host and from a container on the bridge (hairpin); and
after ``podman rm -f``, after ``--rm`` in the foreground and after conmon's clean-up of a
``--rm`` container that was killed, nothing of that container is left: no iptables rule
or chain (both families, both backends), no host veth, no IP reservation, nothing in the
stateDir, no libcni cache file, no netns mount.

How podman is kept off the real host (each point found by running it here):

- podman runs with ``nsenter --net=<node>``, not ``ip netns exec``: the latter remounts
  /sys in a new mount namespace, the cgroup mounts vanish and runc fails ("no cgroup mount
  found in mountinfo"). Only the network namespace matters for the plugin: podman's
  children (the plugin, conmon, conmon's ``podman container cleanup``) inherit it.
- ``--root``, ``--runroot``, ``--tmpdir`` in a temp dir; containers.conf (``CONTAINERS_CONF``,
  passed on to conmon's exit command) sets ``lock_type = "file"`` (else a lock segment
  /dev/shm/libpod_lock), no default ulimits, and the plugin directories: a temp dir with
  the symlink ``cni-bridge`` -> ``$CNI_BRIDGE_BIN``, then /usr/lib/cni.
- cgroups: ``--cgroup-manager cgroupfs``, ``--cgroups no-conmon`` and a unique
  ``--cgroup-parent``, removed at the end in every hierarchy.
- podman's libcni has no cache directory setting: results go to /var/lib/cni/results/
  ``<network>-<container ID>-<ifname>`` on the real host. podman deletes its own file on
  removal; the fixture removes what is left of ours and the directories if it created them.
- container network namespaces are bind mounts /run/netns/netns-<uuid> (``ip netns``
  lists them); podman removes them, the fixture unmounts leftovers of its containers.
- conmon daemonizes, so it is reparented; PID 1 of these machines does not reap, so the
  test process is a child subreaper for the module and reaps conmon itself.

What podman 4.3 sends the plugin: a VERSION call before each command (CNI_PATH, CNI_NETNS
and CNI_IFNAME "dummy"); ADD and DEL with ``CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=<name>``,
``CNI_NETNS=/run/netns/netns-<uuid>`` and ``runtimeConfig.portMappings`` (``hostPort``,
``containerPort``, ``protocol``, no ``hostIP``); DEL also with ``prevResult`` from the libcni
cache. conmon itself listens on each published host port (0.0.0.0 only) in the node to
reserve it. Its libcni reads results up to version 1.0.0 only: with ``cniVersion`` 1.1.0
``podman run`` fails with 'plugin type="cni-bridge" failed (add): unsupported CNI result
version "1.1.0"'. The test uses the shipped conf/10-cni-bridge.conflist (1.0.0, with
``cniVersions`` offering 1.1.0 to newer libcni) on its own names and directories.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests import nstools, warm
from tests.plugin import BIN, PATH, REF_DIR, REPO, SKIP_REASON, Node, helper_modes, reservations, token
from tests.polling import wait_for
from tests.rootfs import busybox_unavailable_reason, make_busybox_rootfs
from tests.traffic import NODE_V4, NODE_V6, OUTSIDE_V4, OUTSIDE_V6, PYTHON, UPLINK, Lab, shutil_which

PODMAN = shutil.which("podman", path=PATH)
RUNC = "/usr/sbin/runc"
NSENTER = shutil.which("nsenter", path=PATH)


def _skip_reason() -> str | None:
    if SKIP_REASON is not None:
        return SKIP_REASON
    if PODMAN is None:
        return "podman is not installed (Debian package podman)"
    version = subprocess.run([PODMAN, "--version"], capture_output=True, text=True, check=False).stdout
    major = re.search(r"(\d+)\.\d+", version)
    if major is None or int(major.group(1)) >= 5:
        return f"needs podman 4 (its CNI backend; podman 5 has none), found {version.strip()!r}"
    if not os.access(RUNC, os.X_OK):
        return f"{RUNC} is missing (Debian package runc; crun cannot run containers on hybrid cgroups)"
    if NSENTER is None:
        return "nsenter is missing (util-linux)"
    if shutil_which("iptables-save") is None:
        return "iptables is not installed (Debian package iptables)"
    return busybox_unavailable_reason()


SKIP = _skip_reason()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]

V4, V6 = "10.247.0.0/24", "fd00:247::/64"
GW4, GW6 = "10.247.0.1", "fd00:247::1"
WEB_PORT = 18080  # published by the long-lived web container
RM_PORT, KILL_PORT = 18081, 18082  # published by the containers of the removal tests
INDEX = "hello from the container"
LIBCNI_CACHE = "/var/lib/cni"  # libcni's default, not configurable through podman 4.3
LIBCNI_RESULTS = os.path.join(LIBCNI_CACHE, "results")
CGROUP_ROOT = "/sys/fs/cgroup"
PR_SET_CHILD_SUBREAPER = 36
COMMAND_TIMEOUT = 120.0
# busybox-static 1.35's wget crashes (SIGSEGV) with its own -T timeout: busybox timeout instead.
WGET = ("/bin/busybox", "timeout", "5", "wget", "-q", "-O", "-")
READY_TIMEOUT = 20.0

# GET one URL with http.client (no proxy from the environment), print status and body.
_HTTP_GET = r"""
import http.client, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    conn.request("GET", "/")
    resp = conn.getresponse()
    print(resp.status, resp.read().decode(errors="replace").strip())
except OSError as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(1)
"""


# --- small helpers --------------------------------------------------------------------


def http_get(ns: str, host: str, port: int, timeout: float = 3.0) -> tuple[bool, str]:
    """GET http://host:port/ from namespace ``ns``: (succeeded, "status body" or the error)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, PYTHON, "-I", "-S", "-c", _HTTP_GET, host, str(port),
                           str(timeout)], capture_output=True, text=True, timeout=timeout + 30, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


NFT_VIEW = "nft list ruleset"


def firewall_views() -> list[str]:
    """Every way to list the node's firewall: each *-save tool installed (the default flavour,
    what the iptables backend uses, and both named ones) and nft's ruleset (the nftables backend)."""
    names = ["iptables-save", "ip6tables-save"]
    for backend in ("nft", "legacy"):
        names += [f"iptables-{backend}-save", f"ip6tables-{backend}-save"]
    return [name for name in names if shutil_which(name)] + ([NFT_VIEW] if shutil_which("nft") else [])


def default_backend() -> str:
    out = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=False).stdout
    return "legacy" if "legacy" in out else "nft"


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _children_zombies() -> list[tuple[int, str]]:
    """(pid, comm) of this process's exited children not reaped yet."""
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ")"
        head, _, tail = stat.rpartition(")")
        fields = tail.split()
        if len(fields) >= 2 and fields[0] == "Z" and fields[1] == str(me):
            out.append((int(entry), head.partition("(")[2]))
    return out


def reap_podman_orphans(killed: frozenset[int] = frozenset()) -> None:
    """Reap conmon and podman processes that were reparented to us (we are a subreaper), and
    the processes of ours that the clean-up killed (a container's, once its conmon is gone)."""
    for pid, comm in _children_zombies():
        if comm in ("conmon", "podman") or pid in killed:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def set_child_subreaper(on: bool) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) == 0)


# --- the podman environment -----------------------------------------------------------


@dataclass
class Ctr:
    """One container, with what it had while it was running (to check it is gone later)."""

    name: str
    cid: str = ""
    netns: str = ""
    v4: str = ""
    v6: str = ""
    veth: str = ""
    rules: dict[str, list[str]] = field(default_factory=dict)  # saver -> lines with id=<cid>
    chains: set[str] = field(default_factory=set)


class Pod:
    """podman with the CNI backend, configured entirely from one temp dir, in the lab's node."""

    def __init__(self, lab: Lab, backend: str) -> None:
        self.lab = lab
        self.node = lab.node
        self.backend = backend  # the plugin's firewallBackend
        tok = token(4)
        self.net = f"cbt-pod-{tok}"
        self.bridge = f"cbtpd{tok}"  # 13 bytes
        self.cgroup_parent = f"/cbt-podman-{tok}"
        self.prefix = f"cbt-{tok}"  # container names
        self.tmp = tempfile.mkdtemp(prefix="cbt-podman-")
        self.created: list[str] = []  # container names, for the finalizer
        self.started: list[Ctr] = []  # what each detached container had while running
        self.netns_paths: set[str] = set()  # /run/netns/netns-* of our containers
        self.dirs: dict[str, str] = {}
        for name in ("conf", "bin", "root", "runroot", "tmp", "home", "vartmp", "ipam", "state", "rootfs", "cid"):
            self.dirs[name] = os.path.join(self.tmp, name)
            os.makedirs(self.dirs[name])
        self.data_dir, self.state_dir = self.dirs["ipam"], self.dirs["state"]
        self.rootfs = make_busybox_rootfs(self.dirs["rootfs"])
        os.symlink(os.path.abspath(BIN), os.path.join(self.dirs["bin"], "cni-bridge"))
        self.containers_conf = os.path.join(self.tmp, "containers.conf")
        with open(self.containers_conf, "w", encoding="utf-8") as handle:
            handle.write("[containers]\ndefault_ulimits = []\n"
                         f"[network]\ncni_plugin_dirs = [{json.dumps(self.dirs['bin'])}, {json.dumps(REF_DIR)}]\n"
                         '[engine]\nlock_type = "file"\n')
        # The shipped network list (its cniVersion header and capabilities), on test-owned names and dirs.
        with open(os.path.join(REPO, "conf", "10-cni-bridge.conflist"), encoding="utf-8") as handle:
            self.conflist: dict[str, Any] = json.load(handle)
        self.conflist["name"] = self.net
        plugin = self.conflist["plugins"][0]
        assert plugin["type"] == "cni-bridge" and plugin["ipMasq"] and plugin["capabilities"]["portMappings"]
        plugin.update(bridge=self.bridge, isGateway=True, isDefaultGateway=True, stateDir=self.state_dir,
                      firewallBackend=self.backend,
                      ipam={"type": "host-local", "dataDir": self.data_dir,
                            "ranges": [[{"subnet": V4}], [{"subnet": V6}]]})
        with open(os.path.join(self.dirs["conf"], f"{self.net}.conflist"), "w", encoding="utf-8") as handle:
            json.dump(self.conflist, handle, indent=1)

    # --- running podman -----------------------------------------------------------

    def base(self) -> list[str]:
        assert NSENTER is not None and PODMAN is not None
        d = self.dirs
        return [NSENTER, f"--net={nstools.netns_path(self.node.name)}", PODMAN,
                "--network-backend", "cni", "--cni-config-dir", d["conf"],
                "--root", d["root"], "--runroot", d["runroot"], "--tmpdir", d["tmp"],
                "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--runtime", RUNC]

    def env(self) -> dict[str, str]:
        return {"PATH": PATH, "CONTAINERS_CONF": self.containers_conf, "HOME": self.dirs["home"],
                "TMPDIR": self.dirs["vartmp"], "LANG": "C.UTF-8", **self.node.helper_env()}

    def podman(self, *args: str, check: bool = True,
               timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run([*self.base(), *args], env=self.env(), capture_output=True, text=True,
                                  timeout=timeout, check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            if check:
                raise
            proc = subprocess.CompletedProcess(exc.cmd, -1, "", f"timed out after {timeout}s")
        finally:
            reap_podman_orphans()
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def run_args(self, name: str, *options: str) -> list[str]:
        """``podman run`` options common to every container (before the rootfs argument)."""
        self.created.append(name)
        return ["run", "--name", name, "--network", self.net, "--cgroups", "no-conmon",
                "--cgroup-parent", self.cgroup_parent, "--cidfile", os.path.join(self.dirs["cid"], name),
                *options, "--rootfs", self.rootfs]

    def start(self, name: str, *command: str, options: tuple[str, ...] = ()) -> Ctr:
        """A detached container, inspected once it runs."""
        cid = self.podman(*self.run_args(name, "-d", *options), *command).stdout.strip().splitlines()[-1]
        ctr = Ctr(name, cid)
        self.inspect(ctr)
        self.started.append(ctr)
        return ctr

    def inspect(self, ctr: Ctr) -> None:
        """Fill in what the running container has: addresses, netns, host veth, its rules."""
        data = json.loads(self.podman("inspect", "--type", "container", ctr.name).stdout)[0]
        assert data["State"]["Running"], f"{ctr.name} is not running: {data['State']}"
        ctr.cid = data["Id"]
        ctr.netns = data["NetworkSettings"]["SandboxKey"]
        self.netns_paths.add(ctr.netns)
        net = data["NetworkSettings"]["Networks"][self.net]
        ctr.v4, ctr.v6 = net["IPAddress"], net["GlobalIPv6Address"]
        ctr.veth = host_veth_name(self.net, ctr.cid, "eth0")
        ctr.rules = self.rules_of(ctr.cid)
        ctr.chains = {chain for lines in ctr.rules.values() for line in lines
                      for chain in re.findall(r"\bCNIBR-[A-Z]+-[0-9a-f]{8,}\b", line)}

    def exec(self, ctr: Ctr, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", ctr.name, *command, check=check)

    def fetch(self, ctr: Ctr, url: str) -> tuple[bool, str]:
        """busybox wget in the container: (got the index page, what wget printed)."""
        proc = self.exec(ctr, *WGET, url, check=False)
        return proc.returncode == 0 and proc.stdout.strip() == INDEX, (proc.stdout + proc.stderr).strip()

    # --- reading the node -----------------------------------------------------------

    def save(self, view: str) -> str:
        return self.node.sh(*view.split(), check=False).stdout

    @property
    def rule_views(self) -> tuple[str, ...]:
        """Where the plugin's rules show: both iptables families, or nft's ruleset."""
        return ("iptables-save", "ip6tables-save") if self.backend == "iptables" else (NFT_VIEW,)

    def rules_of(self, needle_id: str) -> dict[str, list[str]]:
        """Lines of each *-save in the node carrying the attachment comment of a container."""
        return {saver: [line for line in self.save(saver).splitlines() if f"id={needle_id}" in line]
                for saver in firewall_views()}

    def state_files_mentioning(self, text: str) -> list[str]:
        found = []
        for top, _dirs, files in os.walk(self.state_dir):
            for name in files:
                path = os.path.join(top, name)
                if warm.is_helper_file(name):
                    continue
                if text in name or text in _read(path):
                    found.append(os.path.relpath(path, self.state_dir))
        return found

    def reservation_of(self, cid: str) -> list[str]:
        return [ip for ip, content in reservations(self.data_dir, self.net).items()
                if content.splitlines()[:1] == [cid]]

    def cache_file(self, cid: str) -> str:
        return os.path.join(LIBCNI_RESULTS, f"{self.net}-{cid}-eth0")

    def leftovers(self, ctr: Ctr) -> list[str]:
        """Everything of a removed container still present (empty: all gone)."""
        problems = []
        for saver, lines in self.rules_of(ctr.cid).items():
            if lines:
                problems.append(f"{saver} still has rules of {ctr.cid}:\n  " + "\n  ".join(lines))
            text = self.save(saver)
            for chain in ctr.chains:
                if re.search(rf"\b{chain}\b", text):
                    problems.append(f"{saver} still has the chain {chain} of {ctr.cid}")
        if ctr.veth in self.node.link_names():
            problems.append(f"host veth {ctr.veth} is still in the node")
        held = set(self.reservation_of(ctr.cid)) | {ip for ip in (ctr.v4, ctr.v6) if ip} & set(
            reservations(self.data_dir, self.net))
        if held:
            problems.append(f"IP reservations left in {self.data_dir}: {sorted(held)}")
        files = self.state_files_mentioning(ctr.cid)
        if files:
            problems.append(f"stateDir files still mention {ctr.cid}: {files}")
        if os.path.exists(self.cache_file(ctr.cid)):
            problems.append(f"libcni cache file {self.cache_file(ctr.cid)} is left")
        if ctr.netns and os.path.exists(ctr.netns):
            problems.append(f"the container's netns {ctr.netns} is left")
        if self.podman("container", "exists", ctr.name, check=False).returncode == 0:
            problems.append(f"podman still knows {ctr.name}")
        return problems

    def describe(self) -> str:
        """For failure messages: the node's links, addresses and firewall."""
        addrs = self.node.sh("ip", "-br", "addr", check=False).stdout
        return f"node links:\n{addrs}\nnode ruleset:\n{self.lab.ruleset()}"

    # --- clean-up -------------------------------------------------------------------

    def our_processes(self) -> list[int]:
        """Live processes of this environment: in our cgroup parent, or naming our temp dir."""
        pids: set[int] = set()
        for hierarchy in _cgroup_hierarchies():
            top = os.path.join(hierarchy, self.cgroup_parent.lstrip("/"))
            for where, _dirs, _files in os.walk(top):
                pids.update(int(p) for p in _read(os.path.join(where, "cgroup.procs")).split())
        for entry in os.listdir("/proc"):
            if entry.isdigit() and self.tmp in _read(f"/proc/{entry}/cmdline").replace("\0", " "):
                pids.add(int(entry))
        pids.discard(os.getpid())
        return sorted(pids)

    def cleanup(self) -> None:
        for name in reversed(self.created):
            self.podman("rm", "-f", "-t", "0", "--ignore", name, check=False, timeout=60)
        killed: set[int] = set()
        for _ in range(50):  # conmon, the container processes, a hung podman: by pid
            pids = self.our_processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
            reap_podman_orphans(frozenset(killed))
        reap_podman_orphans(frozenset(killed))
        for path in self.netns_paths:  # our container namespaces, if podman left them
            if os.path.exists(path):
                subprocess.run(["umount", path], capture_output=True, check=False)
                try:
                    os.unlink(path)
                except OSError:
                    pass
        _unmount_under(self.tmp)
        for name in os.listdir(LIBCNI_RESULTS) if os.path.isdir(LIBCNI_RESULTS) else []:
            if name.startswith(f"{self.net}-"):
                os.unlink(os.path.join(LIBCNI_RESULTS, name))
        for hierarchy in _cgroup_hierarchies():
            top = os.path.join(hierarchy, self.cgroup_parent.lstrip("/"))
            for where, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(where)
                except OSError:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def _cgroup_hierarchies() -> list[str]:
    try:
        return [os.path.join(CGROUP_ROOT, d) for d in os.listdir(CGROUP_ROOT)
                if os.path.isdir(os.path.join(CGROUP_ROOT, d))]
    except OSError:
        return []


def _unmount_under(root: str) -> None:
    """Lazily unmount every mount point at or below ``root`` (deepest first)."""
    points = []
    for line in _read("/proc/self/mountinfo").splitlines():
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].encode().decode("unicode_escape")
            if point == root or point.startswith(root + "/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@pytest.fixture(scope="module", params=[(backend, helper) for backend in ("iptables", "nftables")
                                        for helper in helper_modes(__name__)],
                ids=lambda param: f"{param[0]}-helper-{param[1]}")
def pod(request: pytest.FixtureRequest) -> Iterator[Pod]:
    """The node, its outside host, the podman environment and the cni-bridge network; afterwards
    every container, process, mount, cgroup and file of it is removed, also on failure. The
    finalizer then checks that the network's last container took every rule with it, and
    with the helper required, that the helper served podman's requests."""
    cache_existed = {path: os.path.isdir(path) for path in (LIBCNI_CACHE, LIBCNI_RESULTS)}
    backend, helper = request.param
    node = Node(helper)
    subreaper = False
    lab: Lab | None = None
    pod: Pod | None = None
    problems: list[str] = []
    try:
        subreaper = set_child_subreaper(True)
        lab = Lab(node, default_backend())
        pod = Pod(lab, backend)
        yield pod
        for name in reversed(pod.created):
            pod.podman("rm", "-f", "-t", "0", "--ignore", name, check=False)
        for ctr in pod.started:
            problems += pod.leftovers(ctr)
        for saver in firewall_views():
            left = [line for line in pod.save(saver).splitlines() if "cni-bridge" in line or "CNIBR-" in line]
            if left:
                problems.append(f"{saver} after the last container of the network:\n  " + "\n  ".join(left))
        veths = [link for link in node.veths() if link != UPLINK]
        if veths:
            problems.append(f"veths left in the node: {veths}")
        if reservations(pod.data_dir, pod.net):
            problems.append(f"reservations left: {reservations(pod.data_dir, pod.net)}")
        records = [os.path.relpath(os.path.join(top, f), pod.state_dir)
                   for top, _d, files in os.walk(pod.state_dir) for f in files
                   if f not in ("lock", "generation") and not warm.is_helper_file(f)]
        if records:
            problems.append(f"stateDir still holds {records}")
        # Every ADD and DEL of the module: at least the web, client and removal containers'.
        if helper == "require" and warm.served_requests(pod.state_dir) < 6:
            problems.append(f"the warm helper served {warm.served_requests(pod.state_dir)} requests")
    finally:
        if pod is not None:
            pod.cleanup()
        if lab is not None:
            lab.cleanup()
        node.cleanup()
        for path in (LIBCNI_RESULTS, LIBCNI_CACHE):  # podman made them: remove them if empty
            if not cache_existed[path] and os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
        if subreaper:
            set_child_subreaper(False)
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def web(pod: Pod) -> Ctr:
    """busybox httpd serving /www on port 80, published as WEB_PORT; answers once this returns."""
    ctr = pod.start(f"{pod.prefix}-web", "/bin/httpd", "-f", "-p", "80", "-h", "/www",
                    options=("-p", f"{WEB_PORT}:80"))
    wait_for("httpd in the web container", lambda: pod.fetch(ctr, "http://127.0.0.1/"), READY_TIMEOUT, 0.1)
    return ctr


@pytest.fixture(scope="module")
def client(pod: Pod) -> Ctr:
    """A second container on the network, idle: the tests run wget and nc in it."""
    return pod.start(f"{pod.prefix}-cli", "/bin/sleep", "3600")


def in_subnet(address: str, subnet: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(subnet)


# --- the tests --------------------------------------------------------------------------


def test_a_container_gets_addresses_from_the_conflist_subnets_and_leaves_nothing_after_run_rm(pod: Pod) -> None:
    name = f"{pod.prefix}-once"
    out = pod.podman(*pod.run_args(name, "--rm"), "/bin/sh", "-c",
                     "ip -o addr show dev eth0; ip route; ip -6 route").stdout
    v4 = re.findall(r"\binet (\S+)/(\d+) .*scope global", out)
    v6 = re.findall(r"\binet6 (\S+)/(\d+) .*scope global", out)
    assert len(v4) == 1 and in_subnet(v4[0][0], V4) and v4[0][1] == "24", out
    assert len(v6) == 1 and in_subnet(v6[0][0], V6) and v6[0][1] == "64", out
    assert f"default via {GW4} dev eth0" in out and f"default via {GW6} dev eth0" in out, out
    cid = _read(os.path.join(pod.dirs["cid"], name)).strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid), f"no container ID in the cidfile: {cid!r}"
    # --rm in the foreground: podman's own removal ran DEL; nothing of it may be left.
    gone = Ctr(name, cid, v4=v4[0][0], v6=v6[0][0], veth=host_veth_name(pod.net, cid, "eth0"))
    problems = pod.leftovers(gone)
    assert not problems, "\n".join(problems) + "\n" + pod.describe()


def test_the_running_container_is_attached_as_the_result_says(pod: Pod, web: Ctr) -> None:
    assert in_subnet(web.v4, V4) and in_subnet(web.v6, V6), (web.v4, web.v6)
    out = pod.exec(web, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert f"inet {web.v4}/24" in out and f"inet6 {web.v6}/64" in out, out
    # The host-local store holds the reservations, in the test's dataDir.
    assert sorted(pod.reservation_of(web.cid)) == sorted([web.v4, web.v6]), reservations(pod.data_dir, pod.net)
    # Its host veth is on the bridge in the node, and the bridge carries the gateways.
    link = pod.node.link(web.veth)
    assert link is not None and link.get("master") == pod.bridge, pod.describe()
    assert f"{GW4}/24" in pod.node.addrs(pod.bridge) and f"{GW6}/64" in pod.node.addrs(pod.bridge)
    # Rules carrying its comment, in both families (masquerade, published port).
    default = {saver: lines for saver, lines in web.rules.items() if saver in pod.rule_views}
    assert all(default.values()) and len(default) == len(pod.rule_views), f"no rules with id={web.cid}:\n{pod.describe()}"
    assert web.chains or pod.backend == "nftables", web.rules
    # libcni's cache on the real host, and the netns bind mount podman made.
    assert os.path.exists(pod.cache_file(web.cid))
    assert web.netns.startswith("/run/netns/") and os.path.exists(web.netns)


def test_a_second_container_reaches_the_first(pod: Pod, web: Ctr, client: Ctr) -> None:
    assert client.v4 != web.v4 and in_subnet(client.v4, V4)
    for url in (f"http://{web.v4}/", f"http://[{web.v6}]/"):
        wait_for(f"{url} from the client container", functools.partial(pod.fetch, client, url), READY_TIMEOUT, 0.1)


def test_outbound_traffic_leaves_masqueraded_as_the_node_uplink_address(pod: Pod, client: Ctr) -> None:
    pod.lab.serve_echo(pod.lab.outside, tcp=7000, families=(4, 6))
    for outside, node_address in ((OUTSIDE_V4, NODE_V4), (OUTSIDE_V6, NODE_V6)):
        def seen(outside: str = outside) -> tuple[bool, str]:
            proc = pod.exec(client, "nc", "-w", "2", outside, "7000", check=False)
            return proc.returncode == 0 and bool(proc.stdout.strip()), (proc.stdout + proc.stderr).strip()
        peer = wait_for(f"the outside host {outside} from the client container", seen, READY_TIMEOUT, 0.1)
        assert peer == node_address, (f"the outside host saw {peer}, not the node's uplink address "
                                      f"{node_address} (client {client.v4} / {client.v6})\n{pod.describe()}")


def test_published_port_answers_through_localhost_and_the_node_addresses(pod: Pod, web: Ctr) -> None:
    lab = pod.lab
    where = {
        "node via 127.0.0.1": (lab.node.name, "127.0.0.1"),
        "node via its uplink address": (lab.node.name, NODE_V4),
        "node via its uplink IPv6 address": (lab.node.name, NODE_V6),
        "outside host via the node address": (lab.outside, NODE_V4),
        "outside host via the node IPv6 address": (lab.outside, NODE_V6),
    }
    failed = {}
    for label, (ns, host) in where.items():
        ok, text = http_get(ns, host, WEB_PORT)
        if not (ok and text == f"200 {INDEX}"):
            failed[label] = text
    assert not failed, f"GET :{WEB_PORT} failed: {failed}\n{pod.describe()}"


def test_published_port_answers_a_container_on_the_bridge_hairpin(pod: Pod, web: Ctr, client: Ctr) -> None:
    for url in (f"http://{NODE_V4}:{WEB_PORT}/", f"http://[{NODE_V6}]:{WEB_PORT}/"):
        ok, text = pod.fetch(client, url)
        assert ok, f"{url} from the client container: {text}\n{pod.describe()}"


def test_rm_f_removes_every_trace_of_the_container(pod: Pod) -> None:
    ctr = pod.start(f"{pod.prefix}-gone", "/bin/httpd", "-f", "-p", "80", "-h", "/www",
                    options=("-p", f"{RM_PORT}:80"))
    assert all(ctr.rules.get(s) for s in pod.rule_views), pod.describe()
    assert ctr.veth in pod.node.link_names() and pod.reservation_of(ctr.cid)
    assert pod.state_files_mentioning(ctr.cid) and os.path.exists(pod.cache_file(ctr.cid))
    pod.podman("rm", "-f", "-t", "0", ctr.name)
    problems = pod.leftovers(ctr)
    assert not problems, "\n".join(problems) + "\n" + pod.describe()
    ok, text = http_get(pod.lab.node.name, "127.0.0.1", RM_PORT, timeout=1)
    assert not ok, f"port {RM_PORT} still answers after rm -f: {text}"


def test_conmon_cleanup_of_a_killed_rm_container_removes_every_trace(pod: Pod) -> None:
    """``--rm -d`` then SIGKILL: the container exits, conmon runs ``podman container cleanup
    --rm`` on its own, in the node namespace; the test only waits for it."""
    ctr = pod.start(f"{pod.prefix}-kill", "/bin/httpd", "-f", "-p", "80", "-h", "/www",
                    options=("--rm", "-p", f"{KILL_PORT}:80"))
    assert all(ctr.rules.get(s) for s in pod.rule_views), pod.describe()
    pod.podman("kill", "-s", "KILL", ctr.name)
    def removed() -> tuple[bool, str]:
        proc = pod.podman("container", "exists", ctr.name, check=False)
        return proc.returncode == 1, f"podman container exists: {proc.returncode} {proc.stderr.strip()}"
    wait_for(f"conmon's clean-up of {ctr.name}", removed, timeout=60, interval=0.1)
    problems = pod.leftovers(ctr)
    assert not problems, "\n".join(problems) + "\n" + pod.describe()
