"""The executable as a cnitool-compatible runner: ``cni-bridge add|check|del|gc|status ...``.

The runner runs inside the node namespace (``ip netns exec NODE BIN add NET NETNS``) with
NETCONFPATH, CNI_PATH and CNI_CACHE_DIR in the test's temp dirs; CNI_PATH holds a link named
``cni-bridge`` to the executable under test, then Debian's reference plugins.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests import nstools, polling, warm
from tests.plugin import (  # noqa: F401
    BIN,
    PATH,
    REF_DIR,
    Container,
    Node,
    node,
    requires_plugin,
    requires_reference,
    reservations,
)

pytestmark = [pytest.mark.integration, requires_plugin, requires_reference]

V4, GW4 = "10.231.0.0/24", "10.231.0.1"
V6, GW6 = "fd00:231::/64", "fd00:231::1"
PM = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


class Proc:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.rc, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"Proc(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class Runner:
    """NETCONFPATH, CNI_PATH and CNI_CACHE_DIR of one test, and the runner run in its node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.conf_dir = node.temp_dir()
        self.cache_dir = node.temp_dir()
        self.data_dir = node.data_dir()
        self.bin_dir = node.temp_dir()
        os.symlink(os.path.realpath(BIN), os.path.join(self.bin_dir, "cni-bridge"))
        self.cni_path = f"{self.bin_dir}:{REF_DIR}"

    def write_list(self, name: str, plugins: list[dict[str, Any]], version: str = "1.0.0",
                   filename: str | None = None, **extra: Any) -> dict[str, Any]:
        doc = {"cniVersion": version, "name": name, "plugins": plugins, **extra}
        with open(os.path.join(self.conf_dir, filename or f"10-{name}.conflist"), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2)
        return doc

    def cni_bridge(self, bridge: str, *subnets: str, **extra: Any) -> dict[str, Any]:
        """A cni-bridge plugin entry, with host-local in this test's dataDir and firewall state in the node's."""
        return {"type": "cni-bridge", "bridge": bridge, "isGateway": True, "stateDir": self.node.state_dir,
                "ipam": {"type": "host-local", "dataDir": self.data_dir,
                         "ranges": [[{"subnet": s}] for s in subnets or (V4,)]}, **extra}

    def run(self, *args: str, cni_args: str | None = None, cap_args: Any = None,
            env: dict[str, str] | None = None) -> Proc:
        full = {"PATH": PATH, "NETCONFPATH": self.conf_dir, "CNI_PATH": self.cni_path,
                "CNI_CACHE_DIR": self.cache_dir}
        if cni_args is not None:
            full["CNI_ARGS"] = cni_args
        if cap_args is not None:
            full["CAP_ARGS"] = cap_args if isinstance(cap_args, str) else json.dumps(cap_args)
        full.update(env or {})
        proc = subprocess.run(["ip", "netns", "exec", self.node.name, BIN, *args], env=full,
                              capture_output=True, text=True, timeout=120, check=False)
        return Proc(proc)

    def add(self, net: str, netns: str, cid: str | None, ifname: str = "eth0", **kw: Any) -> dict[str, Any]:
        """add that must succeed; returns the printed result."""
        self.expect_veth(net, cid or cnitool_id(netns), ifname)
        args = ["add", net, netns, "-i", ifname] + (["--container-id", cid] if cid else [])
        r = self.run(*args, **kw)
        assert r.rc == 0, r
        result: dict[str, Any] = r.json
        return result

    def ok(self, *args: str, **kw: Any) -> Proc:
        r = self.run(*args, **kw)
        assert r.rc == 0 and "error" not in r.stderr.lower(), r
        return r

    def expect_veth(self, net: str, cid: str, ifname: str) -> None:
        """Tell the node fixture about a host veth cni-bridge may make, for its leak check."""
        self.node.host_veths.add(host_veth_name(net, cid, ifname))

    def cache_file(self, net: str, cid: str, ifname: str = "eth0") -> str:
        return os.path.join(self.cache_dir, "results", f"{net}-{cid}-{ifname}")

    def cache_entries(self) -> list[str]:
        directory = os.path.join(self.cache_dir, "results")
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []

    def rules(self, family: int = 4) -> str:
        """The node's iptables-save (the backend the plugins use: the iptables alternative)."""
        return self.node.sh("iptables-save" if family == 4 else "ip6tables-save").stdout

    def our_rules(self) -> list[str]:
        return [line for family in (4, 6) for line in self.rules(family).splitlines()
                if "cni-bridge" in line or "CNIBR-" in line]


def cnitool_id(netns: str) -> str:
    return "cnitool-" + hashlib.sha512(netns.encode()).hexdigest()[:20]


@pytest.fixture
def runner(node: Node) -> Runner:
    return Runner(node)


def dnat_chains(runner: Runner, family: int) -> list[str]:
    """The reference portmap's per-container chains in the node's nat table."""
    return [line[1:].split()[0] for line in runner.rules(family).splitlines() if line.startswith(":CNI-DN-")]


def container_addrs(node: Node, c: Container, ifname: str = "eth0") -> list[str]:
    return sorted(node.addrs(ifname, c))


def assert_clean(runner: Runner, c: Container, net: str) -> None:
    """Nothing of an attachment left: no veth, no address reserved, no cache entry, no rule of ours."""
    node = runner.node
    assert node.veths() == [], node.veths()
    assert node.link_names(c) <= {"lo"}, node.link_names(c)
    assert reservations(runner.data_dir, net) == {}
    assert runner.cache_entries() == []
    assert runner.our_rules() == []


# ------------------------------------------------------------------- reference plugins only

def test_reference_list_add_check_del(runner: Runner) -> None:
    """bridge + host-local + portmap of the reference, at 1.0.0, driven as cnitool would drive them."""
    node = runner.node
    net, bridge = node.net_name(), node.bridge_name()
    runner.write_list(net, [
        {"type": "bridge", "bridge": bridge, "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": runner.data_dir, "ranges": [[{"subnet": V4}]]}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ])
    c = node.add_container()
    # The netns by name: resolved to /run/netns/NAME; no --container-id: derived as cnitool does.
    result = runner.add(net, c.name, None, cap_args={"portMappings": PM})
    cid = cnitool_id(c.path)
    assert result["cniVersion"] == "1.0.0"
    assert [ip["address"] for ip in result["ips"]] == ["10.231.0.2/24"]
    assert container_addrs(node, c) == ["10.231.0.2/24"]
    assert node.ping(c, GW4)
    assert reservations(runner.data_dir, net) == {"10.231.0.2": f"{cid}\r\neth0"}
    # portmap got the capability: its DNAT rule points at the container.
    assert "--to-destination 10.231.0.2:80" in runner.rules(4), runner.rules(4)
    assert len(dnat_chains(runner, 4)) == 1

    cache = runner.cache_file(net, cid)
    with open(cache, encoding="utf-8") as f:
        entry = json.load(f)
    assert entry["kind"] == "cniCacheV1" and entry["containerId"] == cid and entry["ifName"] == "eth0"
    assert entry["networkName"] == net and entry["netns"] == c.path
    assert entry["result"] == result and entry["capabilityArgs"] == {"portMappings": PM}
    assert "cniArgs" not in entry

    # CAP_ARGS given again win over the cached ones: with no mappings portmap's CHECK has nothing to check.
    runner.ok("check", net, c.name, cap_args={"portMappings": []})
    # Without CAP_ARGS the runner passes the cached mappings, and the reference portmap (1.1.1) fails its
    # CHECK on a known bug: it also looks for the IPv4 container's DNAT rule in ip6tables.
    r = runner.run("check", net, c.name)
    assert r.rc == 1 and 'plugin type="portmap" failed (check)' in r.stderr and "ipv6" in r.stderr, r
    node.sh("ip", "netns", "exec", c.name, "ip", "link", "set", "eth0", "down")
    r = runner.run("check", net, c.name, cap_args={"portMappings": []})
    assert r.rc == 1 and 'plugin type="bridge" failed (check)' in r.stderr, r
    node.sh("ip", "netns", "exec", c.name, "ip", "link", "set", "eth0", "up")

    # del without CAP_ARGS: the cached mappings let portmap remove its chain.
    runner.ok("del", net, c.path)  # the path: the same derived ID
    assert dnat_chains(runner, 4) == []
    assert not os.path.exists(cache)
    assert node.link_names(c) == {"lo"} and node.veths() == []
    assert reservations(runner.data_dir, net) == {}
    assert "10.231.0.2" not in runner.rules(4)
    # del again: DEL is idempotent, also without a cached result.
    runner.ok("del", net, c.path)


# ------------------------------------------------------------------- cni-bridge through the runner

def test_cni_bridge_masquerade_port_mapping_and_requested_ip(runner: Runner) -> None:
    node = runner.node
    net, bridge, cid = node.net_name(), node.bridge_name(), "rn-ctr-1"
    runner.write_list(net, [runner.cni_bridge(bridge, ipMasq=True, capabilities={"portMappings": True})],
                      version="1.1.0")
    c = node.add_container()
    result = runner.add(net, c.path, cid, ifname="net1", cni_args="IP=10.231.0.77",
                        cap_args={"portMappings": PM, "bandwidth": {"ingressRate": 1}})
    assert [ip["address"] for ip in result["ips"]] == ["10.231.0.77/24"]
    assert container_addrs(node, c, "net1") == ["10.231.0.77/24"]
    assert reservations(runner.data_dir, net) == {"10.231.0.77": f"{cid}\r\nnet1"}
    assert node.ping(c, GW4)

    comment = f'"cni-bridge net={net} id={cid} if=net1"'
    ours = [line for line in runner.rules(4).splitlines() if comment in line]
    assert any("--to-destination 10.231.0.77:80" in line and "--dport 8080" in line for line in ours), ours
    assert any(line.endswith("-j MASQUERADE") for line in ours), ours
    assert any("-s 10.231.0.77/32" in line for line in ours), ours

    with open(runner.cache_file(net, cid, "net1"), encoding="utf-8") as f:
        entry = json.load(f)
    assert entry["cniArgs"] == [["IP", "10.231.0.77"]]
    assert entry["capabilityArgs"] == {"portMappings": PM, "bandwidth": {"ingressRate": 1}}  # all of CAP_ARGS

    runner.ok("check", net, c.path, "--container-id", cid, "-i", "net1")
    runner.ok("del", net, c.path, "--container-id", cid, env={"CNI_IFNAME": "net1"})
    assert_clean(runner, c, net)


def test_under_ip_netns_exec_the_plugins_start_no_helper_unless_asked(runner: Runner) -> None:
    """`ip netns exec NODE cni-bridge add` runs in a mount namespace that ends with it; its plugins,
    in that namespace too, must not start a warm helper that no later call could reach. A
    CNI_BRIDGE_HELPER the caller sets is the caller's choice, and reaches the plugins."""
    node = runner.node
    net = node.net_name()
    runner.write_list(net, [runner.cni_bridge(node.bridge_name())])
    os.makedirs(node.state_dir, exist_ok=True)  # a helper is started only for an existing stateDir
    c = node.add_container()
    netns = nstools.netns_path(name=node.name)
    runner.add(net, c.path, "rn-nohelper")
    runner.ok("del", net, c.path, "--container-id", "rn-nohelper")
    assert warm.helpers_in(netns) == [], "a warm helper was left idling for a mount namespace that is gone"

    runner.add(net, c.path, "rn-helper", env={"CNI_BRIDGE_HELPER": "1"})
    polling.wait_for("the helper CNI_BRIDGE_HELPER=1 asks for",
                     lambda: (bool(warm.helpers_in(netns)), f"helpers {warm.helpers_in(netns)}"))
    runner.ok("del", net, c.path, "--container-id", "rn-helper")


def test_del_by_name_after_the_netns_is_gone(runner: Runner) -> None:
    """A bare name means /run/netns/NAME also once it is deleted: del derives add's container ID."""
    node = runner.node
    net = node.net_name()
    runner.write_list(net, [runner.cni_bridge(node.bridge_name(), ipMasq=True)])
    c = node.add_container()
    runner.expect_veth(net, cnitool_id(c.path), "eth0")
    runner.ok("add", net, c.name)
    assert len(reservations(runner.data_dir, net)) == 1 and runner.cache_entries() and node.veths()
    nstools.delete_netns(c.name)
    runner.ok("del", net, c.name)
    assert node.veths() == []
    assert reservations(runner.data_dir, net) == {}
    assert runner.cache_entries() == []
    assert runner.our_rules() == []


def test_status_and_gc_keep_live_attachments(runner: Runner) -> None:
    node = runner.node
    net, bridge = node.net_name(), node.bridge_name()
    plugin = runner.cni_bridge(bridge, ipMasq=True)
    runner.write_list(net, [plugin], version="1.1.0")
    r = runner.ok("status", net)
    assert r.stdout == f"network {net}: ready\n", r

    live, doomed = node.add_container(), node.add_container()
    runner.add(net, live.path, "gc-live")
    runner.add(net, doomed.path, "gc-doomed")
    # An attachment made by calling the plugin directly is not in the runner's cache.
    stray = node.add_container()
    node.add({**plugin, "name": net, "cniVersion": "1.1.0"}, "gc-stray", stray)
    held = reservations(runner.data_dir, net)
    assert sorted(held.values()) == ["gc-doomed\r\neth0", "gc-live\r\neth0", "gc-stray\r\neth0"], held
    assert any("id=gc-doomed " in line for line in runner.our_rules())

    nstools.delete_netns(doomed.name)
    r = runner.ok("gc", net)
    assert r.stdout.splitlines() == ["deleted stale attachment gc-doomed/eth0", "kept attachment gc-live/eth0",
                                     'collected type="cni-bridge"'], r
    # The stale one was DELeted, the uncached one collected by GC, the live one kept.
    assert list(reservations(runner.data_dir, net).values()) == ["gc-live\r\neth0"]
    assert runner.cache_entries() == [f"{net}-gc-live-eth0"]
    ids = {word for line in runner.our_rules() for word in line.split() if word.startswith("id=")}
    assert ids == {"id=gc-live"}, runner.our_rules()
    # GC releases addresses and rules; the stray container is alive and keeps its veth until its DEL.
    assert sorted(node.veths()) == sorted(host_veth_name(net, cid, "eth0") for cid in ("gc-live", "gc-stray"))
    runner.ok("check", net, live.path, "--container-id", "gc-live")
    assert node.ping(live, GW4)

    # gc again: nothing stale any more, nothing changes.
    r = runner.ok("gc", net)
    assert r.stdout.splitlines() == ["kept attachment gc-live/eth0", 'collected type="cni-bridge"'], r
    assert list(reservations(runner.data_dir, net).values()) == ["gc-live\r\neth0"]

    runner.ok("del", net, live.path, "--container-id", "gc-live")
    node.ok("DEL", {**plugin, "name": net, "cniVersion": "1.1.0"}, "gc-stray", stray.path)
    assert_clean(runner, live, net)


def test_status_failure_and_old_versions(runner: Runner) -> None:
    node = runner.node
    full, old = node.net_name(), node.net_name()
    runner.write_list(full, [runner.cni_bridge(node.bridge_name(), "10.231.9.0/30")], version="1.1.0")
    runner.write_list(old, [runner.cni_bridge(node.bridge_name())], version="1.0.0")
    c = node.add_container()
    runner.add(full, c.path, "st-full")
    r = runner.run("status", full)
    assert r.rc == 1 and r.stdout == "", r
    assert 'plugin type="cni-bridge" failed (status)' in r.stderr and "(CNI error code 50)" in r.stderr, r
    r = runner.ok("status", old)
    assert r.stdout == f"network {old}: cniVersion 1.0.0 has no STATUS; not asked\n", r
    runner.ok("del", full, c.path, "--container-id", "st-full")


@pytest.mark.parametrize("failing", ["tuning", "cbt-no-such-plugin"])
def test_failing_later_plugin_undoes_the_whole_add(runner: Runner, failing: str) -> None:
    node = runner.node
    net, bridge, cid = node.net_name(), node.bridge_name(), "rn-fail"
    second = ({"type": "tuning", "dataDir": node.temp_dir(), "sysctl": {"net.ipv4.conf.eth0.cbt_no_such_knob": "1"}}
              if failing == "tuning" else {"type": failing})
    runner.write_list(net, [runner.cni_bridge(bridge, ipMasq=True, capabilities={"portMappings": True}), second])
    c = node.add_container()
    runner.expect_veth(net, cid, "eth0")
    r = runner.run("add", net, c.path, "--container-id", cid, cap_args={"portMappings": PM})
    assert r.rc == 1 and r.stdout == "", r
    assert f'cni-bridge add: plugin type="{failing}" failed (add)' in r.stderr, r
    assert "CNI error code" in r.stderr
    assert "the partial attachment was deleted" in r.stderr or "cleanup DEL also failed" in r.stderr, r
    assert_clean(runner, c, net)
    # The same attachment can be made afterwards (host-local hands out the next address: round robin).
    runner.write_list(net, [runner.cni_bridge(bridge, ipMasq=True, capabilities={"portMappings": True})])
    result = runner.add(net, c.path, cid, cap_args={"portMappings": PM})
    assert [ip["address"] for ip in result["ips"]] == ["10.231.0.3/24"]
    assert node.ping(c, GW4)
    runner.ok("del", net, c.path, "--container-id", cid)
    assert_clean(runner, c, net)


def test_an_add_whose_result_cannot_be_cached_is_undone(runner: Runner) -> None:
    node = runner.node
    net, cid = node.net_name(), "rn-nocache"
    runner.write_list(net, [runner.cni_bridge(node.bridge_name(), ipMasq=True)])
    c = node.add_container()
    runner.expect_veth(net, cid, "eth0")
    blocker = os.path.join(node.temp_dir(), "not-a-directory")
    open(blocker, "w").close()  # results/ cannot be made below a file
    r = runner.run("add", net, c.path, "--container-id", cid, env={"CNI_CACHE_DIR": blocker})
    assert r.rc == 1 and r.stdout == "", r
    assert "failed to cache the result" in r.stderr and "the partial attachment was deleted" in r.stderr, r
    assert_clean(runner, c, net)


def test_add_twice_is_refused_and_the_first_attachment_stays(runner: Runner) -> None:
    node = runner.node
    net = node.net_name()
    # A single-plugin .conf: wrapped into a list of one by the runner.
    with open(os.path.join(runner.conf_dir, f"50-{net}.conf"), "w", encoding="utf-8") as f:
        json.dump({"cniVersion": "1.0.0", "name": net, **runner.cni_bridge(node.bridge_name(), ipMasq=True)}, f)
    c = node.add_container()
    first = runner.add(net, c.path, "twice")
    rules_before = runner.our_rules()
    r = runner.run("add", net, c.path, "--container-id", "twice")
    assert r.rc == 1 and r.stdout == "", r
    assert "already attached" in r.stderr and "run del first" in r.stderr and "(CNI error code 103)" in r.stderr, r
    assert container_addrs(node, c) == ["10.231.0.2/24"]
    assert list(reservations(runner.data_dir, net)) == ["10.231.0.2"]
    assert runner.our_rules() == rules_before
    with open(runner.cache_file(net, "twice"), encoding="utf-8") as f:
        assert json.load(f)["result"] == first
    runner.ok("check", net, c.path, "--container-id", "twice")
    assert node.ping(c, GW4)
    # Another interface of the same container is another attachment.
    second = runner.add(net, c.path, "twice", ifname="eth1")
    assert [ip["address"] for ip in second["ips"]] == ["10.231.0.3/24"]
    runner.ok("del", net, c.path, "--container-id", "twice", "-i", "eth1")
    runner.ok("del", net, c.path, "--container-id", "twice")
    assert_clean(runner, c, net)


def test_check_needs_the_cached_result(runner: Runner) -> None:
    node = runner.node
    net = node.net_name()
    runner.write_list(net, [runner.cni_bridge(node.bridge_name())])
    c = node.add_container()
    r = runner.run("check", net, c.path, "--container-id", "never-added")
    assert r.rc == 1 and r.stdout == "", r
    assert "no cached result for eth0 of container never-added" in r.stderr and "(CNI error code 3)" in r.stderr, r

    runner.add(net, c.path, "uncached")
    os.unlink(runner.cache_file(net, "uncached"))
    r = runner.run("check", net, c.path, "--container-id", "uncached")
    assert r.rc == 1 and "no cached result" in r.stderr, r
    # del still works without the cache: cni-bridge finds everything from the attachment's names.
    runner.ok("del", net, c.path, "--container-id", "uncached")
    assert_clean(runner, c, net)


def test_check_reports_a_broken_attachment(runner: Runner) -> None:
    node = runner.node
    net = node.net_name()
    runner.write_list(net, [runner.cni_bridge(node.bridge_name())])
    c = node.add_container()
    runner.add(net, c.path, "broken")
    node.sh("ip", "netns", "exec", c.name, "ip", "addr", "flush", "dev", "eth0")
    r = runner.run("check", net, c.path, "--container-id", "broken")
    assert r.rc == 1, r
    assert 'plugin type="cni-bridge" failed (check)' in r.stderr and "(CNI error code 108)" in r.stderr, r
    runner.ok("del", net, c.path, "--container-id", "broken")
    assert_clean(runner, c, net)


# ------------------------------------------------------------------- the command line

def test_help_version_and_exit_codes(runner: Runner) -> None:
    r = runner.run("--help")
    assert r.rc == 0 and r.stdout.startswith("usage: cni-bridge add|check|del") and r.stderr == "", r
    assert "NETCONFPATH" in r.stdout and "CNI_CACHE_DIR" in r.stdout
    r = runner.run("--version")
    assert r.rc == 0 and r.stdout.startswith("cni-bridge ") and r.stderr == "", r
    for args in (["frobnicate"], ["add", "net-only"], ["add", "n", "x", "--bogus"], ["gc"]):
        r = runner.run(*args)
        assert r.rc == 2 and r.stdout == "" and "cni-bridge --help" in r.stderr, (args, r)
    # Failures of the runner itself: exit 1 with the CNI error on stderr.
    r = runner.run("status", "cbt-none")
    assert r.rc == 1 and r.stdout == "", r
    assert r.stderr == f"cni-bridge status: no net configurations found in {runner.conf_dir} (CNI error code 7)\n"
    with open(os.path.join(runner.conf_dir, "10-broken.conflist"), "w", encoding="utf-8") as f:
        f.write("{")
    r = runner.run("del", "cbt-none", "/run/netns/x")
    assert r.rc == 1 and "10-broken.conflist is not valid JSON" in r.stderr and "code 6" in r.stderr, r
    os.unlink(os.path.join(runner.conf_dir, "10-broken.conflist"))
    runner.write_list("cbt-other", [{"type": "cni-bridge"}])
    r = runner.run("status", "cbt-none")
    assert r.rc == 1 and f'no net configuration with name "cbt-none" in {runner.conf_dir}' in r.stderr, r
    # The list is loaded first, then the runtime arguments are checked: usage errors, before any plugin runs.
    r = runner.run("add", "cbt-other", "/run/netns/x", cni_args="IP")
    assert r.rc == 2 and "invalid CNI_ARGS pair 'IP'" in r.stderr, r
    r = runner.run("add", "cbt-other", "/run/netns/x", cap_args="[]")
    assert r.rc == 2 and "CAP_ARGS must be a JSON object" in r.stderr, r
    r = runner.run("add", "cbt-other", "/run/netns/x", "-i", "a/b")
    assert r.rc == 2 and "interface name" in r.stderr, r
    runner.write_list("cbt-nobin", [{"type": "cbt-no-such-plugin"}], version="1.1.0")
    r = runner.run("status", "cbt-nobin")
    assert r.rc == 1 and 'failed to find plugin "cbt-no-such-plugin"' in r.stderr, r


def test_without_arguments_it_is_the_plugin(runner: Runner) -> None:
    env = {"PATH": PATH, "CNI_COMMAND": "VERSION"}
    proc = subprocess.run(["ip", "netns", "exec", runner.node.name, BIN], input='{"cniVersion": "1.0.0"}',
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc
    out = json.loads(proc.stdout)
    assert out["cniVersion"] == "1.0.0" and "1.1.0" in out["supportedVersions"], out
    # No arguments and no CNI_COMMAND: a description, pointing at the runner.
    proc = subprocess.run(["ip", "netns", "exec", runner.node.name, BIN], input="", env={"PATH": PATH},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout == "", proc
    assert "cni-bridge --help" in proc.stderr and "runner" in proc.stderr, proc
    # Through the CNI_PATH link too (as the runner and runtimes call it).
    proc = subprocess.run(["ip", "netns", "exec", runner.node.name, os.path.join(runner.bin_dir, "cni-bridge")],
                          input="{}", env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "supportedVersions" in json.loads(proc.stdout), proc
