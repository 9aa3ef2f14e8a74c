"""Harness for running the built plugin executable against throwaway namespaces.

Every test gets a ``Node``: a fresh network namespace playing the host (the plugin
runs inside it with ``ip netns exec``, so its bridge and host veths never touch the
real host), plus container namespaces made on demand. The ``node`` fixture deletes
all of them, and every temp dir it handed out, when the test ends, also on failure.

The executable is ``$CNI_BRIDGE_BIN`` or ``dist/cni-bridge`` (``./build.sh`` builds it); the
tests run a copy of it that extracts its bundle into a temp dir of the session, never into
the host's bundle cache (tests/onefile_builds.py).
Import the fixtures into a test module with ``from tests.plugin import node  # noqa: F401``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import threading
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cni_bridge.ipam.boot_scope import RECORD_NAME as BOOT_RECORD
from cni_bridge.network.naming import host_veth_name
from tests import nstools, warm
from tests.onefile_builds import session_executable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT = os.environ.get("CNI_BRIDGE_BIN") or os.path.join(REPO, "dist", "cni-bridge")
BIN = session_executable(BUILT)
REF_DIR = "/usr/lib/cni"
REF_HOST_LOCAL = os.path.join(REF_DIR, "host-local")
REF_STATIC = os.path.join(REF_DIR, "static")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# How a node runs the plugin (Node.helper): "off" in-process (CNI_BRIDGE_HELPER=0), "require"
# through the warm helper (every request whose stateDir exists must be served by a helper),
# "default" as an operator's runtime does (no setting: the helper is on). CNI_BRIDGE_TEST_HELPER
# picks the modes of the `node` fixture: "off", "require", "both" for every module, or "auto"
# (the default): both for the datapath, firewall and runtime modules (HELPER_MODULES), off elsewhere.
HELPER_MODE = os.environ.get("CNI_BRIDGE_TEST_HELPER", "auto")
HELPER_MODULES = ("test_datapath_", "test_del_completes", "test_firewall_", "test_podman", "test_cri", "test_containerd")
# Firewall tests whose subject is not what runs the plugin: restore is a command of its own.
SINGLE_MODE_MODULES = ("test_firewall_restore_traffic",)


def helper_modes(module: str) -> list[str]:
    """The helper modes a test module's nodes run in."""
    if HELPER_MODE == "auto":
        name = module.rsplit(".", 1)[-1]
        return ["off", "require"] if name.startswith(HELPER_MODULES) and name not in SINGLE_MODE_MODULES else ["off"]
    return {"off": ["off"], "require": ["require"], "both": ["off", "require"]}[HELPER_MODE]
ALL_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def _skip_reason() -> str | None:
    if not nstools.have_privileges():
        return "needs root and iproute2 (creates network namespaces)"
    if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
        return f"plugin executable {BIN} is missing: run ./build.sh first"
    return None


SKIP_REASON = _skip_reason()
# Put in each module's pytestmark: skips with a clear reason when the harness cannot run.
requires_plugin = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
requires_reference = pytest.mark.skipif(
    not os.access(REF_HOST_LOCAL, os.X_OK) or not os.access(REF_STATIC, os.X_OK),
    reason=f"reference plugins not installed in {REF_DIR} (Debian containernetworking-plugins)",
)


def token(n: int = 3) -> str:
    return secrets.token_hex(n)


class PluginRun(tuple):  # type: ignore[type-arg]
    """One invocation: unpacks as ``(rc, out, stderr)``; ``out`` is stdout parsed as JSON
    (None when empty or not JSON); the raw text is in ``stdout``."""

    stdout: str

    def __new__(cls, rc: int, out: Any, stderr: str, stdout: str) -> PluginRun:
        self = super().__new__(cls, (rc, out, stderr))
        self.stdout = stdout
        return self

    @property
    def rc(self) -> int:
        return int(self[0])

    @property
    def out(self) -> Any:
        return self[1]

    @property
    def stderr(self) -> str:
        return str(self[2])

    @property
    def code(self) -> int | None:
        """The CNI error code printed on failure."""
        return self.out.get("code") if isinstance(self.out, dict) else None

    @property
    def msg(self) -> str:
        """msg and details of the printed error, for substring checks."""
        if not isinstance(self.out, dict):
            return ""
        return f"{self.out.get('msg', '')} {self.out.get('details', '')}"

    def __repr__(self) -> str:
        return f"PluginRun(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr!r})"

    __str__ = __repr__


@dataclass(frozen=True)
class Container:
    name: str

    @property
    def path(self) -> str:
        return nstools.netns_path(name=self.name)


def netconf(
    name: str,
    bridge: str,
    ipam: dict[str, Any] | None,
    version: str = "1.1.0",
    **extra: Any,
) -> dict[str, Any]:
    """A cni-bridge network config; ``extra`` keys are copied as given (isGateway=True...)."""
    conf: dict[str, Any] = {"cniVersion": version, "name": name, "type": "cni-bridge", "bridge": bridge}
    conf["ipam"] = ipam if ipam is not None else {}
    conf.update(extra)
    return conf


def host_local(data_dir: str, *range_sets: Any, **extra: Any) -> dict[str, Any]:
    """ipam for host-local; each range set is a subnet string or a list of range dicts."""
    ranges = [[{"subnet": rs}] if isinstance(rs, str) else rs for rs in range_sets]
    return {"type": "host-local", "dataDir": data_dir, "ranges": ranges, **extra}


def with_prev(conf: dict[str, Any], prev: Any) -> dict[str, Any]:
    out = dict(conf)
    out["prevResult"] = prev
    return out


class Node:
    """A throwaway "host" namespace where the plugin runs, and its containers."""

    def __init__(self, helper: str = "off") -> None:
        self.helper = helper
        self.name = nstools.create_netns()
        self.containers: list[Container] = []
        self.temp_dirs: list[str] = []
        self._state_dir: str | None = None
        self._state_dir_lock = threading.Lock()
        self.bridges: list[str] = []
        self.host_veths: set[str] = set()
        try:
            self.sh("ip", "link", "set", "lo", "up")
        except BaseException:
            nstools.delete_netns(self.name)
            raise

    # --- lifecycle ------------------------------------------------------------

    def cleanup(self) -> None:
        warm.kill_helpers_in(nstools.netns_path(name=self.name))
        for c in self.containers:
            nstools.delete_netns(c.name)
        nstools.delete_netns(self.name)
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
            if os.path.exists(d):  # a test that set the immutable attribute and died
                subprocess.run(["chattr", "-R", "-i", d], capture_output=True, check=False)
                shutil.rmtree(d, ignore_errors=True)

    @property
    def state_dir(self) -> str:
        with self._state_dir_lock:  # tests run the plugin from many threads at once
            if self._state_dir is None:
                self._state_dir = self.temp_dir()
            return self._state_dir

    def add_container(self) -> Container:
        c = Container(nstools.create_netns())
        self.containers.append(c)
        return c

    def temp_dir(self) -> str:
        d = tempfile.mkdtemp(prefix="cbt-")
        self.temp_dirs.append(d)
        return d

    def data_dir(self) -> str:
        """A fresh IPAM dataDir, removed at the end of the test."""
        return self.temp_dir()

    def bridge_name(self) -> str:
        name = f"cbtbr{token(4)}"  # 13 bytes, below IFNAMSIZ
        self.bridges.append(name)
        return name

    @staticmethod
    def net_name() -> str:
        return f"cbt-net-{token(4)}"

    # --- running things ----------------------------------------------------------

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command inside the node namespace."""
        return nstools.run_in_netns(self.name, *argv, check=check)

    def run(
        self,
        command: str,
        conf: dict[str, Any] | None,
        container_id: str | None = None,
        netns_path: str | None = None,
        ifname: str | None = "eth0",
        extra_env: dict[str, str] | None = None,
        stdin_override: bytes | None = None,
        *,
        cni_args: str | None = None,
        cni_path: str = REF_DIR,
        executable: str = BIN,
        wrapper: tuple[str, ...] | list[str] = (),
    ) -> PluginRun:
        """Run the plugin (or ``executable``) in the node ns with a clean CNI environment.

        A None container_id / netns_path / ifname leaves that variable out (GC, STATUS);
        an empty string passes it empty. ``wrapper`` runs the plugin under a command (strace).
        """
        env = {"PATH": PATH, "CNI_COMMAND": command, "CNI_PATH": cni_path}
        if container_id is not None:
            env["CNI_CONTAINERID"] = container_id
        if netns_path is not None:
            env["CNI_NETNS"] = netns_path
        if ifname is not None and command in ("ADD", "DEL", "CHECK"):
            env["CNI_IFNAME"] = ifname
        if cni_args is not None:
            env["CNI_ARGS"] = cni_args
        env.update(extra_env or {})
        if command == "ADD" and conf and container_id and ifname:
            self.host_veths.add(host_veth_name(str(conf.get("name")), container_id, ifname))
        if conf is not None and "stateDir" not in conf:
            # Firewall state is per host: each node namespace gets its own directory.
            conf = {**conf, "stateDir": self.state_dir}
        stdin = stdin_override if stdin_override is not None else json.dumps(conf).encode()
        proc = subprocess.run(
            [*self.launcher(env), *wrapper, executable],
            input=stdin,
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
        stdout = proc.stdout.decode(errors="replace")
        try:
            out = json.loads(stdout) if stdout.strip() else None
        except ValueError:
            out = None
        return PluginRun(proc.returncode, out, proc.stderr.decode(errors="replace"), stdout)

    def helper_env(self) -> dict[str, str]:
        """CNI_BRIDGE_HELPER for this node's mode, for whatever runs the plugin (a runtime too)."""
        return {} if self.helper == "default" else {"CNI_BRIDGE_HELPER": "0" if self.helper == "off" else self.helper}

    def launcher(self, env: dict[str, str]) -> list[str]:
        """How to enter the node. `ip netns exec` makes a new mount namespace on every call, so
        no helper would ever be reused: with the helper on, only the network namespace is entered."""
        for key, value in self.helper_env().items():
            env.setdefault(key, value)
        if env.get("CNI_BRIDGE_HELPER") == "0":
            return ["ip", "netns", "exec", self.name]
        return ["nsenter", f"--net={nstools.netns_path(name=self.name)}"]

    def add(self, conf: dict[str, Any], cid: str, container: Container, ifname: str = "eth0", **kw: Any) -> Any:
        """ADD that must succeed; returns the parsed result."""
        r = self.run("ADD", conf, cid, container.path, ifname, **kw)
        assert r.rc == 0 and isinstance(r.out, dict) and "code" not in r.out, f"ADD failed: {r}"
        return r.out

    def ok(self, command: str, conf: dict[str, Any], cid: str | None = None, netns: str | None = None,
           ifname: str | None = "eth0", **kw: Any) -> PluginRun:
        """A command that must succeed (exit 0, no error object)."""
        r = self.run(command, conf, cid, netns, ifname, **kw)
        assert r.rc == 0 and r.code is None, f"{command} failed: {r}"
        return r

    def ping(self, ns: str | Container | None, address: str) -> bool:
        """One echo request from ``ns`` (a container, a namespace name, or the node)."""
        name = ns.name if isinstance(ns, Container) else ns or self.name
        proc = subprocess.run(
            ["ip", "netns", "exec", name, "ping", "-n", "-q", "-c1", "-W1", address],
            capture_output=True, text=True, check=False, timeout=10,
        )
        return proc.returncode == 0

    def add_plain_link(self, name: str, ns: str | Container | None = None) -> str:
        """A link that is not a bridge nor a veth, named ``name``; returns its kind.

        A dummy where the kernel has the driver; this kernel's CI build has none, so
        an ifb (always built in here) stands in for it.
        """
        target = self._ns(ns)
        for link_kind in ("dummy", "ifb"):
            proc = nstools.run_in_netns(target, "ip", "link", "add", name, "type", link_kind, check=False)
            if proc.returncode == 0:
                return link_kind
        raise RuntimeError(f"cannot create a dummy or ifb link: {proc.stderr}")

    def add_uplink(self, name: str, mtu: int, address: str, gateway: str) -> None:
        """An "uplink" in the node carrying its default route: a dummy, or a veth pair
        with both ends in the node (for kernels without the dummy driver). Up, with carrier."""
        proc = self.sh("ip", "link", "add", name, "mtu", str(mtu), "type", "dummy", check=False)
        if proc.returncode != 0:
            peer = name[:11] + "-p"
            self.sh("ip", "link", "add", name, "mtu", str(mtu), "type", "veth", "peer", "name", peer,
                    "mtu", str(mtu))
            self.sh("ip", "link", "set", peer, "up")
        self.sh("ip", "addr", "add", address, "dev", name)
        self.sh("ip", "link", "set", name, "up")
        self.sh("ip", "route", "add", "default", "via", gateway, "dev", name)

    # --- reading state with ip -j ------------------------------------------------

    def _ns(self, ns: str | Container | None) -> str:
        return ns.name if isinstance(ns, Container) else ns or self.name

    def links(self, ns: str | Container | None = None) -> list[dict[str, Any]]:
        links: list[dict[str, Any]] = nstools.ip_json(self._ns(ns), "link", "show")
        return links

    def link_names(self, ns: str | Container | None = None) -> set[str]:
        return {link["ifname"] for link in self.links(ns)}

    def link(self, name: str, ns: str | Container | None = None) -> dict[str, Any] | None:
        return next((link for link in self.links(ns) if link["ifname"] == name), None)

    def existing_link(self, name: str, ns: str | Container | None = None) -> dict[str, Any]:
        """``ip -j link show`` of a link that must exist."""
        link = self.link(name, ns)
        assert link is not None, f"no link {name!r} in {self._ns(ns)}"
        return link

    def veths(self, ns: str | Container | None = None) -> list[str]:
        return [link["ifname"] for link in self.links(ns) if kind(link) == "veth"]

    def addrs(self, ifname: str, ns: str | Container | None = None, *, scope: str = "global") -> list[str]:
        """``ip/prefix`` of one link, global scope by default (no fe80::)."""
        try:
            data = nstools.ip_json(self._ns(ns), "addr", "show", "dev", ifname)
        except subprocess.CalledProcessError:
            return []
        return [
            f"{a['local']}/{a['prefixlen']}"
            for link in data
            for a in link.get("addr_info", [])
            if scope is None or a.get("scope") == scope
        ]

    def routes(self, ns: str | Container | None = None, family: int = 4) -> list[dict[str, Any]]:
        routes: list[dict[str, Any]] = nstools.ip_json(self._ns(ns), f"-{family}", "route", "show")
        return routes


def assert_bridge_unused(node: Node, bridge: str, gateways: tuple[str, ...] = ()) -> None:
    """After a failed ADD: the bridge and the gateway addresses are shared by the network's
    attachments, so a failed ADD keeps them (concurrent ADDs may be using them), but it leaves
    no port on the bridge and no address other than the gateways."""
    if node.link(bridge) is None:
        return
    ports = [link["ifname"] for link in node.links() if link.get("master") == bridge]
    assert ports == [], f"ports left on {bridge}: {ports}"
    extra = [a for a in node.addrs(bridge) if a not in gateways]
    assert extra == [], f"addresses other than the gateways left on {bridge}: {extra}"


def kind(link: dict[str, Any]) -> str:
    return str((link.get("linkinfo") or {}).get("info_kind", ""))


def reservations(data_dir: str, network: str) -> dict[str, str]:
    """``{ip: file content}`` of the host-local store (no lock, boot record or last_reserved_ip.*)."""
    directory = os.path.join(data_dir, network)
    if not os.path.isdir(directory):
        return {}
    out = {}
    for entry in sorted(os.listdir(directory)):
        if entry in ("lock", BOOT_RECORD) or entry.startswith("last_reserved_ip."):
            continue
        with open(os.path.join(directory, entry), encoding="utf-8", errors="surrogateescape", newline="") as handle:
            out[entry] = handle.read()
    return out


def store_files(data_dir: str, network: str) -> list[str]:
    """Every file name in the store directory, lock and hints included."""
    directory = os.path.join(data_dir, network)
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def _root_link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


@pytest.fixture
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    """A node namespace (lo up); everything it made is deleted afterwards, also on failure.
    Its helper mode comes from the test's parameter (tests/conftest.py: helper_modes).

    Afterwards the root namespace must hold no bridge or host veth of this test: a plugin that
    failed to stay inside the node namespace would show up here.
    """
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    n = Node(getattr(request, "param", "off"))
    try:
        yield n
    finally:
        n.cleanup()
    leaked = (set(n.bridges) | n.host_veths) & _root_link_names()
    assert not leaked, f"links leaked into the root network namespace: {sorted(leaked)}"
