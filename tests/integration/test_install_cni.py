"""`cni-bridge install-cni` as the Kubernetes DaemonSet runs it: the built executable, inside
throwaway node namespaces, installing into test-owned directories (never the host's
/opt/cni/bin or /etc/cni/net.d).

Upgrades use two builds that differ in content: the real bundle with a marker file of its own,
each packed as a single file (tests/onefile_builds.py), so each has its own hash and its own
extraction. Every start of an installed plugin extracts into the test's bundle cache, never the
host's. The Node lookup talks real HTTPS to tests/kube_api.py inside the node namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests import kube_api
from tests.onefile_builds import build_marker, bundle_name, extract_bundle, make_builds
from tests.plugin import BIN, BUILT, PATH, REF_DIR, Node, node, requires_plugin, token  # noqa: F401
from tests.polling import blocked_reading_stdin, wait_for

pytestmark = [pytest.mark.integration, requires_plugin]

POD4, POD6 = "10.244.3.0/24", "fd00:10:244:3::/64"
CLUSTER4, CLUSTER6 = "10.244.0.0/16", "fd00:10:244::/56"
CIDR_ARGS = ("--pod-cidr", f"{POD4},{POD6}", "--cluster-cidr", f"{CLUSTER4},{CLUSTER6}")


@pytest.fixture(scope="module")
def builds() -> Iterator[dict[str, str]]:
    """Single files of two builds, "a" and "b": the real bundle with a marker file each. The
    tests give each start its own cache (CNI_BRIDGE_CACHE_DIR); the default is never used."""
    root = tempfile.mkdtemp(prefix="cbt-builds-")
    try:
        yield make_builds(BUILT, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Host:
    """The CNI directories of one node (in a temp dir), and install-cni run in its namespace."""

    def __init__(self, node: Node) -> None:
        self.node = node
        root = node.temp_dir()
        self.bin_dir = os.path.join(root, "opt", "cni", "bin")
        self.conf_dir = os.path.join(root, "etc", "cni", "net.d")
        self.plugin = os.path.join(self.bin_dir, "cni-bridge")
        self.conflist = os.path.join(self.conf_dir, "10-cni-bridge.conflist")
        # Where every executable started here extracts its bundle.
        self.cache_dir = os.path.join(root, "bundles")
        self.env = {"PATH": PATH, "CNI_BRIDGE_CACHE_DIR": self.cache_dir}

    def command(self, executable: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.node.name, executable, "install-cni",
                "--bin-dir", self.bin_dir, "--conf-dir", self.conf_dir, *args]

    def install(self, executable: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(executable, *args), env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=60, check=False)

    def start_install(self, executable: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.command(executable, *args), env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def version(self) -> tuple[bool, str]:
        """CNI_COMMAND=VERSION through the installed plugin."""
        proc = subprocess.run(["ip", "netns", "exec", self.node.name, self.plugin], input="{}",
                              env={**self.env, "CNI_COMMAND": "VERSION"}, capture_output=True, text=True,
                              timeout=30, check=False)
        try:
            ok = proc.returncode == 0 and "1.0.0" in json.loads(proc.stdout)["supportedVersions"]
        except (ValueError, KeyError):
            ok = False
        return ok, f"rc={proc.returncode} stdout={proc.stdout!r} stderr={proc.stderr[-300:]!r}"

    def extractions(self) -> list[str]:
        return sorted(e for e in os.listdir(self.cache_dir) if not e.startswith("."))

    def build_of(self, extraction: str) -> str:
        return build_marker(os.path.join(self.cache_dir, extraction))

    def current_build(self) -> str:
        """The build installed as the plugin (by its hash: that of its extraction)."""
        return self.build_of(bundle_name(self.plugin))

    def network_list(self) -> Any:
        with open(self.conflist, encoding="utf-8") as handle:
            return json.load(handle)

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(inode, mtime_ns) of every entry under both directories (links not followed)."""
        seen = {}
        for top in (self.bin_dir, self.conf_dir):
            for root, dirs, files in os.walk(top):
                for name in ["", *dirs, *files]:
                    st = os.lstat(os.path.join(root, name))
                    seen[os.path.join(root, name)] = (st.st_ino, st.st_mtime_ns)
        return seen


def plugin_config(host: Host, node: Node) -> dict[str, Any]:
    """What a runtime hands the plugin from the installed list; only the IPAM store and the
    firewall state move into this test's directories (the list names the host's)."""
    doc = host.network_list()
    plugin = {"cniVersion": doc["cniVersion"], "name": doc["name"], **doc["plugins"][0]}
    plugin["ipam"] = {**plugin["ipam"], "dataDir": node.data_dir()}
    plugin["stateDir"] = node.state_dir
    return plugin


def plugin_env(host: Host, command: str, container_id: str, netns: str) -> dict[str, str]:
    return {**host.env, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0", "CNI_PATH": f"{host.bin_dir}:{REF_DIR}"}


def in_network(address: str, *cidrs: str) -> bool:
    ip = ipaddress.ip_interface(address).ip
    return any(ip in ipaddress.ip_network(c) for c in cidrs)


# --- install, and again -----------------------------------------------------------------------

def test_a_fresh_install_then_a_second_run_that_changes_nothing(node: Node) -> None:
    host = Host(node)
    first = host.install(BIN, *CIDR_ARGS)
    assert first.returncode == 0, first.stderr
    bundle = bundle_name(BIN)
    # The file that was started (the launcher tells install-cni), copied whole: one regular file.
    assert not os.path.islink(host.plugin) and os.listdir(host.bin_dir) == ["cni-bridge"]
    with open(host.plugin, "rb") as installed, open(BIN, "rb") as built:
        assert installed.read() == built.read()
    assert os.stat(host.plugin).st_mode & 0o777 == 0o755
    assert host.version()[0], host.version()[1]
    ranges = host.network_list()["plugins"][0]["ipam"]["ranges"]
    assert [r[0]["subnet"] for r in ranges] == [POD4, POD6]
    assert f"{host.plugin}: installed {bundle}" in first.stdout and f"{host.conflist}: written" in first.stdout

    before = host.snapshot()
    again = host.install(BIN, *CIDR_ARGS)
    assert again.returncode == 0, again.stderr
    assert host.snapshot() == before  # no rewrite, not even a touched mtime
    assert again.stdout.splitlines() == [f"cni-bridge install-cni: {host.plugin}: unchanged ({bundle})",
                                         f"cni-bridge install-cni: {host.conflist}: unchanged",
                                         "cni-bridge install-cni: nothing changed"]


def test_the_bundle_run_directly_installs_the_single_file_beside_it(node: Node) -> None:
    """As in the DaemonSet's image: /opt/cni-bridge.d/cni-bridge runs, /opt/cni-bridge is installed."""
    host, image = Host(node), node.temp_dir()
    bundle = extract_bundle(BIN, image)
    shutil.copy(BIN, os.path.join(image, "cni-bridge"))
    r = host.install(os.path.join(bundle, "cni-bridge"), "--executable-only")
    assert r.returncode == 0, r.stderr
    assert f"{host.plugin}: installed {bundle_name(BIN)}" in r.stdout
    with open(host.plugin, "rb") as installed, open(BIN, "rb") as built:
        assert installed.read() == built.read()
    assert not os.path.exists(host.cache_dir)  # nothing was extracted to run it


def test_the_generated_list_attaches_a_pod_with_addresses_from_the_pod_cidrs(node: Node) -> None:
    host = Host(node)
    bridge, network = node.bridge_name(), node.net_name()
    r = host.install(BIN, *CIDR_ARGS, "--bridge", bridge, "--network-name", network)
    assert r.returncode == 0, r.stderr
    node.add_uplink("cbtup0", 1400, "203.0.113.10/24", "203.0.113.1")  # the MTU the list leaves to the plugin
    conf, pod, cid = plugin_config(host, node), node.add_container(), f"pod-{token()}"

    result = node.add(conf, cid, pod, executable=host.plugin)
    addresses = [ip["address"] for ip in result["ips"]]
    assert [in_network(a, POD4) for a in addresses] == [True, False]
    assert [in_network(a, POD6) for a in addresses] == [False, True]
    assert [ip["gateway"] for ip in result["ips"]] == ["10.244.3.1", "fd00:10:244:3::1"]
    assert sorted(node.addrs("eth0", pod)) == sorted(addresses)
    assert node.link("eth0", pod)["mtu"] == 1400  # type: ignore[index]
    assert {"10.244.3.1/24", "fd00:10:244:3::1/64"} <= set(node.addrs(bridge))
    assert any(r.get("dst") == "default" and r.get("gateway") == "10.244.3.1" for r in node.routes(pod))
    # ipMasqExclude: traffic to the rest of the cluster keeps the pod's address.
    v4, v6 = node.sh("iptables-save", "-t", "nat").stdout, node.sh("ip6tables-save", "-t", "nat").stdout
    assert any(f"-d {CLUSTER4}" in line and "-j RETURN" in line for line in v4.splitlines()), v4
    assert any(f"-d {CLUSTER6}" in line and "-j RETURN" in line for line in v6.splitlines()), v6

    node.ok("DEL", conf, cid, pod.path, executable=host.plugin)
    assert node.link("eth0", pod) is None
    assert [link for link in node.links() if link.get("master") == bridge] == []


# --- concurrency and upgrades -----------------------------------------------------------------

class VersionLoop(threading.Thread):
    """CNI_COMMAND=VERSION through the installed plugin, over and over, until stopped."""

    def __init__(self, host: Host) -> None:
        super().__init__(daemon=True)
        self.host = host
        self.stopped = threading.Event()
        self.runs = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stopped.is_set():
            ok, detail = self.host.version()
            self.runs += 1
            if not ok:
                self.failures.append(detail)


def test_two_installers_racing_leave_a_consistent_install_and_a_plugin_that_always_runs(
        node: Node, builds: dict[str, str]) -> None:
    host = Host(node)
    loop = VersionLoop(host)
    rounds = ["a", "b", "a", "b", "a", "b"]
    try:
        for number, build in enumerate(rounds):
            racers = [host.start_install(builds[build], *CIDR_ARGS) for _ in range(2)]
            outputs = [racer.communicate(timeout=60) for racer in racers]
            assert [racer.returncode for racer in racers] == [0, 0], outputs
            plugin_lines = sorted(line for out, _ in outputs for line in out.splitlines() if f"{host.plugin}:" in line)
            # The installers take turns: one renames its copy into place, the other finds it done.
            assert len(plugin_lines) == 2 and "installed" in plugin_lines[0] and "unchanged" in plugin_lines[1], \
                plugin_lines
            assert host.current_build() == build
            if number == 0:
                loop.start()
    finally:
        loop.stopped.set()
        if loop.is_alive():
            loop.join(timeout=60)
    assert loop.failures == [], f"{len(loop.failures)} of {loop.runs} runs failed; first: {loop.failures[0]}"
    assert loop.runs >= 10
    assert os.listdir(host.bin_dir) == ["cni-bridge"]
    # Each build was extracted once, however often it was installed and started.
    assert sorted(host.build_of(e) for e in host.extractions()) == ["a", "b"]
    assert [e for e in os.listdir(host.conf_dir) if e.startswith(".")] == []
    assert [r[0]["subnet"] for r in host.network_list()["plugins"][0]["ipam"]["ranges"]] == [POD4, POD6]


def test_an_upgrade_while_a_plugin_runs_from_the_old_build(node: Node, builds: dict[str, str]) -> None:
    host = Host(node)
    bridge, network = node.bridge_name(), node.net_name()
    names = ("--bridge", bridge, "--network-name", network)
    assert host.install(builds["a"], *CIDR_ARGS, *names).returncode == 0
    old_extraction = os.path.join(host.cache_dir, bundle_name(builds["a"]))
    conf, pod, cid = plugin_config(host, node), node.add_container(), f"pod-{token()}"

    # A runtime started ADD through the plugin; the plugin waits for its config on stdin.
    plugin = subprocess.Popen(["ip", "netns", "exec", node.name, host.plugin], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=plugin_env(host, "ADD", cid, pod.path))
    try:
        node.host_veths.add(host_veth_name(network, cid, "eth0"))  # for the fixture's leak check
        wait_for("the plugin to block reading stdin", lambda: blocked_reading_stdin(plugin.pid))
        # The launcher has become the old build's bundle executable, in the cache.
        assert os.readlink(f"/proc/{plugin.pid}/exe") == os.path.join(old_extraction, "cni-bridge")

        upgrade = host.install(builds["b"], *CIDR_ARGS, *names)
        assert upgrade.returncode == 0, upgrade.stderr
        assert host.current_build() == "b"
        assert f"installed {bundle_name(builds['b'])} (replaced {bundle_name(builds['a'])})" in upgrade.stdout
        # The new build's first start extracted it and pruned the cache, but not the old build's
        # extraction: a plugin runs from it (and it was started a moment ago).
        assert host.version()[0]
        assert sorted(host.build_of(e) for e in host.extractions()) == ["a", "b"]

        # The old plugin still loads what it needs (the config schema, netlink code) from its extraction.
        out, err = plugin.communicate(json.dumps(conf).encode(), timeout=60)
    finally:
        if plugin.poll() is None:
            plugin.kill()
            plugin.wait()
    assert plugin.returncode == 0, f"stdout={out!r} stderr={err!r}"
    result = json.loads(out)
    assert [in_network(ip["address"], POD4, POD6) for ip in result["ips"]] == [True, True]
    assert sorted(node.addrs("eth0", pod)) == sorted(ip["address"] for ip in result["ips"])
    node.ok("DEL", conf, cid, pod.path, executable=host.plugin)  # the new build deletes what the old one added


# --- pod CIDRs from the Node object -----------------------------------------------------------

def api_env(api: kube_api.KubeApi, node_name: str) -> dict[str, str]:
    """What the DaemonSet's pod has: NODE_NAME from the downward API, the kubelet's service variables."""
    return {"NODE_NAME": node_name, "CLUSTER_CIDRS": f"{CLUSTER4},{CLUSTER6}",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}


def test_pod_cidrs_are_read_from_the_node_object_over_https(node: Node) -> None:
    host = Host(node)
    with kube_api.serve(node.name, node.temp_dir(), {"node-1": {"podCIDR": POD4, "podCIDRs": [POD4, POD6]}}) as api:
        r = host.install(BIN, "--service-account-dir", api.service_account_dir, env=api_env(api, "node-1"))
        assert r.returncode == 0, r.stderr
        assert "pod CIDRs 10.244.3.0/24, fd00:10:244:3::/64 from Node node-1 spec.podCIDRs" in r.stdout
        assert [x[0]["subnet"] for x in host.network_list()["plugins"][0]["ipam"]["ranges"]] == [POD4, POD6]
        assert api.requests() == [{"method": "GET", "path": "/api/v1/nodes/node-1",
                                   "authorization": f"Bearer {kube_api.TOKEN}"}]

        # Given pod CIDRs win: the API server is not asked.
        r = host.install(BIN, "--service-account-dir", api.service_account_dir, "--pod-cidr", "10.244.9.0/24",
                         env=api_env(api, "node-1"))
        assert r.returncode == 0, r.stderr
        assert len(api.requests()) == 1
        assert host.network_list()["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.9.0/24",
                                                                          "gateway": "10.244.9.1"}]]


def test_api_server_failures_are_explained_and_nothing_is_written(node: Node) -> None:
    host = Host(node)
    directory = node.temp_dir()
    with kube_api.serve(node.name, directory, {"node-1": {"podCIDRs": [POD4]}, "fresh": {}}) as api:
        def install(node_name: str) -> subprocess.CompletedProcess[str]:
            return host.install(BIN, "--service-account-dir", api.service_account_dir, env=api_env(api, node_name))

        cases = []
        cases.append(("unknown node", install("node-2"), "HTTP 404: there is no Node named 'node-2'"))
        cases.append(("no pod CIDR yet", install("fresh"), "Node fresh has no spec.podCIDRs yet"))
        api.use_token("wrong")
        cases.append(("bad token", install("node-1"), "HTTP 401: the service account token was not accepted"))
        api.use_token(kube_api.FORBIDDEN_TOKEN)
        cases.append(("no RBAC", install("node-1"), "HTTP 403: the service account may not get nodes"))
        api.use_token(kube_api.TOKEN)
        other_ca, _ = kube_api.make_certificate(directory, "someone-else")
        api.use_ca(other_ca)
        asked = len(api.requests())
        cases.append(("untrusted certificate", install("node-1"), "certificate verify failed"))
        assert len(api.requests()) == asked  # TLS failed before any request: the token never left

    for what, proc, message in cases:
        assert proc.returncode == 1 and message in proc.stderr, f"{what}: {proc}"
    assert not os.path.exists(host.conf_dir) and not os.path.exists(host.bin_dir)


def test_watch_mode_waits_for_the_pod_cidr_repairs_and_ends_on_sigterm_as_pid_1(node: Node) -> None:
    """As in the DaemonSet: PID 1 of its own PID namespace, the Node not yet given a pod CIDR."""
    host = Host(node)
    with kube_api.serve(node.name, node.temp_dir(), {"node-1": {}}) as api:
        env = {**host.env, **api_env(api, "node-1")}
        command = host.command(BIN, "--service-account-dir", api.service_account_dir, "--watch", "0.2")
        unshare = subprocess.Popen([*command[:4], "unshare", "--pid", "--fork", "--kill-child", *command[4:]], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def child() -> tuple[bool, str]:
                with open(f"/proc/{unshare.pid}/task/{unshare.pid}/children", encoding="utf-8") as handle:
                    text = handle.read().strip()
                return bool(text), text
            installer = int(wait_for("unshare to start the installer", child))
            with open(f"/proc/{installer}/status", encoding="utf-8") as handle:
                assert "NSpid:" in (status := handle.read()) and status.split("NSpid:")[1].split()[1] == "1"

            wait_for("a failed lookup", lambda: (len(api.requests()) >= 2, str(api.requests())))
            assert not os.path.exists(host.conflist)
            api.set_node("node-1", {"podCIDRs": [POD4]})  # kube-controller-manager allocated it
            wait_for("the network list", lambda: (os.path.exists(host.conflist), ""))
            asked = len(api.requests())

            os.unlink(host.conflist)
            os.unlink(host.plugin)
            wait_for("the repair", lambda: (os.path.exists(host.conflist) and os.path.lexists(host.plugin), ""))
            assert host.version()[0]
            assert len(api.requests()) == asked  # the pod CIDR is looked up once

            started = time.monotonic()
            os.kill(installer, signal.SIGTERM)
            out, err = unshare.communicate(timeout=10)
            assert unshare.returncode == 0, err
            assert time.monotonic() - started < 2
        finally:
            if unshare.poll() is None:
                unshare.kill()
                unshare.wait()
    waiting = [line for line in err.splitlines() if "Node node-1 has no spec.podCIDRs yet" in line]
    assert waiting and all(line.endswith("; trying again in 0.2 s") for line in waiting), err
    assert "stopped by a signal" in out and f"{host.conflist}: written" in out
