"""cni-bridge chained with Debian's reference plugins, through the runner.

After cni-bridge: ``tuning`` (MAC and a sysctl in the container), ``firewall`` (its CNI-FORWARD
accepts) and ``bandwidth`` (tbf on the host veth, an ifb for egress); they find the container and
host interfaces in cni-bridge's result. Before cni-bridge: ``loopback`` (cni-bridge appends to its
prevResult), and the reference ``bridge`` for the same ifname, which cni-bridge refuses.

Everything runs in a throwaway node namespace, the runner with ``ip netns exec``; the config
directory, plugin path, cache, IPAM store and tuning's dataDir are the test's temp dirs.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests.plugin import (  # noqa: F401
    BIN,
    PATH,
    REF_DIR,
    Container,
    Node,
    kind,
    node,
    requires_plugin,
    requires_reference,
    reservations,
)

pytestmark = [pytest.mark.integration, requires_plugin, requires_reference]

V4, GW4, IP4 = "10.232.0.0/24", "10.232.0.1", "10.232.0.2"
MAC = "02:cb:7e:00:00:01"
ARP_NOTIFY = "net.ipv4.conf.eth0.arp_notify"


class Runner:
    """The runner in one node: temp NETCONFPATH, CNI_PATH (a ``cni-bridge`` link, then the reference
    plugins) and CNI_CACHE_DIR."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.conf_dir, self.cache_dir, self.data_dir = node.temp_dir(), node.temp_dir(), node.data_dir()
        bin_dir = node.temp_dir()
        os.symlink(os.path.realpath(BIN), os.path.join(bin_dir, "cni-bridge"))
        self.cni_path = f"{bin_dir}:{REF_DIR}"

    def write_list(self, name: str, plugins: list[dict[str, Any]], version: str = "1.0.0") -> None:
        with open(os.path.join(self.conf_dir, f"10-{name}.conflist"), "w", encoding="utf-8") as f:
            json.dump({"cniVersion": version, "name": name, "plugins": plugins}, f)

    def cni_bridge(self, bridge: str, subnet: str = V4, **extra: Any) -> dict[str, Any]:
        return {"type": "cni-bridge", "bridge": bridge, "isGateway": True, "stateDir": self.node.state_dir,
                "ipam": {"type": "host-local", "dataDir": self.data_dir, "ranges": [[{"subnet": subnet}]]}, **extra}

    def run(self, command: str, net: str, c: Container, cid: str,
            cap_args: Any = None) -> subprocess.CompletedProcess[str]:
        if command == "add":
            self.node.host_veths.add(host_veth_name(net, cid, "eth0"))  # for the node fixture's leak check
        env = {"PATH": PATH, "NETCONFPATH": self.conf_dir, "CNI_PATH": self.cni_path, "CNI_CACHE_DIR": self.cache_dir}
        if cap_args is not None:
            env["CAP_ARGS"] = json.dumps(cap_args)
        return subprocess.run(["ip", "netns", "exec", self.node.name, BIN, command, net, c.path, "--container-id", cid],
                              env=env, capture_output=True, text=True, timeout=120, check=False)

    def ok(self, command: str, net: str, c: Container, cid: str,
           cap_args: Any = None) -> subprocess.CompletedProcess[str]:
        proc = self.run(command, net, c, cid, cap_args)
        assert proc.returncode == 0, proc
        return proc

    def fails(self, command: str, net: str, c: Container, cid: str) -> str:
        proc = self.run(command, net, c, cid)
        assert proc.returncode == 1 and proc.stdout == "", proc
        return proc.stderr

    def add(self, net: str, c: Container, cid: str, cap_args: Any = None) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ok("add", net, c, cid, cap_args).stdout)
        return result

    def cached(self, net: str, cid: str) -> dict[str, Any]:
        with open(os.path.join(self.cache_dir, "results", f"{net}-{cid}-eth0"), encoding="utf-8") as f:
            entry: dict[str, Any] = json.load(f)
        return entry

    def cache_entries(self) -> list[str]:
        directory = os.path.join(self.cache_dir, "results")
        return sorted(os.listdir(directory)) if os.path.isdir(directory) else []

    def rules(self) -> str:
        return self.node.sh("iptables-save").stdout + self.node.sh("ip6tables-save").stdout

    def our_rules(self) -> list[str]:
        return [line for line in self.rules().splitlines() if "cni-bridge" in line or "CNIBR-" in line]


@pytest.fixture
def runner(node: Node) -> Runner:
    return Runner(node)


def in_container(node: Node, c: Container, *argv: str) -> str:
    return node.sh("ip", "netns", "exec", c.name, *argv).stdout


def sysctl(node: Node, c: Container, key: str) -> str:
    return in_container(node, c, "cat", "/proc/sys/" + key.replace(".", "/")).strip()


def container_mac(node: Node, c: Container) -> str:
    link = node.link("eth0", c)
    assert link is not None
    return str(link["address"])


def firewall_rules(runner: Runner, ip: str) -> list[str]:
    """The reference firewall plugin's accepts for one container address."""
    return [line for line in runner.node.sh("iptables-save", "-t", "filter").stdout.splitlines()
            if line.startswith("-A CNI-FORWARD ") and f"{ip}/32" in line]


def qdiscs(node: Node, dev: str) -> list[str]:
    proc = node.sh("tc", "-j", "qdisc", "show", "dev", dev, check=False)
    return [q["kind"] for q in json.loads(proc.stdout or "[]")] if proc.returncode == 0 else []


def ifb_links(node: Node) -> list[str]:
    return [link["ifname"] for link in node.links() if kind(link) == "ifb"]


def assert_nothing_left(runner: Runner, c: Container, net: str, *, extra_links: set[str]) -> None:
    node = runner.node
    assert node.veths() == [], node.veths()
    assert ifb_links(node) == []
    assert node.link_names() - {"lo"} <= extra_links, node.link_names()
    assert node.link_names(c) == {"lo"}, node.link_names(c)
    assert reservations(runner.data_dir, net) == {}
    assert runner.cache_entries() == []
    assert runner.our_rules() == [], runner.our_rules()


def sandbox_interface(result: dict[str, Any], name: str = "eth0") -> dict[str, Any]:
    (iface,) = [i for i in result["interfaces"] if i["name"] == name and i.get("sandbox")]
    assert isinstance(iface, dict)
    return iface


# ------------------------------------------------------------------- after cni-bridge

def test_tuning_and_firewall_after_cni_bridge(runner: Runner) -> None:
    node = runner.node
    net, bridge, cid = node.net_name(), node.bridge_name(), "ch-tune"
    tuning_dir = node.temp_dir()
    tuning = {"type": "tuning", "mac": MAC, "sysctl": {ARP_NOTIFY: "1"}, "dataDir": tuning_dir}
    firewall = {"type": "firewall", "backend": "iptables"}
    runner.write_list(net, [runner.cni_bridge(bridge, ipMasq=True), tuning, firewall])
    c = node.add_container()

    result = runner.add(net, c, cid)
    # tuning: the MAC and the sysctl took effect in the container, and the printed result says so.
    assert container_mac(node, c) == MAC
    assert sandbox_interface(result)["mac"] == MAC
    assert sysctl(node, c, ARP_NOTIFY) == "1"
    assert runner.cached(net, cid)["result"] == result
    # The result is cni-bridge's, passed through: its address, with the interface index of eth0.
    (ip,) = result["ips"]
    assert ip["address"] == f"{IP4}/24" and result["interfaces"][ip["interface"]]["name"] == "eth0"
    # firewall: its accepts for the container's address.
    accepts = firewall_rules(runner, IP4)
    assert any(f"-d {IP4}/32" in line and "RELATED,ESTABLISHED" in line for line in accepts), accepts
    assert any(f"-s {IP4}/32" in line and line.endswith("-j ACCEPT") for line in accepts), accepts
    assert any(f"id={cid} " in line for line in runner.our_rules())  # cni-bridge's masquerade
    assert node.ping(c, GW4)

    runner.ok("check", net, c, cid)

    # Tampering 1: the container's MAC back to the one cni-bridge gave it. cni-bridge is first in the
    # list, so its CHECK reports it (code 108); tuning's own CHECK sees it too.
    backups = os.listdir(tuning_dir)
    assert len(backups) == 1, backups
    with open(os.path.join(tuning_dir, backups[0]), encoding="utf-8") as f:
        original = json.load(f)["mac"]
    assert original.lower() != MAC
    in_container(node, c, "ip", "link", "set", "eth0", "address", original)
    err = runner.fails("check", net, c, cid)
    assert 'plugin type="cni-bridge" failed (check)' in err and "(CNI error code 108)" in err, err
    assert original.lower() in err.lower() and MAC in err.lower(), err
    direct = node.run("CHECK", {**tuning, "name": net, "cniVersion": "1.0.0", "prevResult": result}, cid, c.path,
                      executable=os.path.join(REF_DIR, "tuning"))
    assert direct.rc != 0 and MAC in direct.msg.lower() and original.lower() in direct.msg.lower(), direct
    in_container(node, c, "ip", "link", "set", "eth0", "address", MAC)
    runner.ok("check", net, c, cid)

    # Tampering 2: the sysctl back to 0. Only tuning checks it.
    in_container(node, c, "sysctl", "-q", "-w", f"{ARP_NOTIFY}=0")
    err = runner.fails("check", net, c, cid)
    assert 'plugin type="tuning" failed (check)' in err and "arp_notify" in err, err
    in_container(node, c, "sysctl", "-q", "-w", f"{ARP_NOTIFY}=1")

    # Tampering 3: firewall's accepts removed.
    for line in firewall_rules(runner, IP4):
        node.sh("iptables", "-t", "filter", "-D", *line.split()[1:])
    err = runner.fails("check", net, c, cid)
    assert 'plugin type="firewall" failed (check)' in err, err

    runner.ok("del", net, c, cid)
    assert firewall_rules(runner, IP4) == []
    assert IP4 not in runner.rules()
    assert os.listdir(tuning_dir) == []  # tuning restored the MAC and dropped its backup
    assert_nothing_left(runner, c, net, extra_links={bridge})


@pytest.fixture
def tbf_and_ifb(node: Node) -> None:
    """Skip unless the kernel can make an ifb link and a tbf qdisc (in the node namespace)."""
    probe = "cbtifbprobe"
    made = node.sh("ip", "link", "add", probe, "type", "ifb", check=False)
    if made.returncode != 0:
        pytest.skip(f"the kernel has no ifb driver, which the bandwidth plugin needs: {made.stderr.strip()}")
    try:
        tbf = node.sh("tc", "qdisc", "add", "dev", probe, "root", "tbf", "rate", "1mbit", "burst", "32kb",
                      "latency", "25ms", check=False)
        if tbf.returncode != 0:
            pytest.skip(f"the kernel has no sch_tbf, which the bandwidth plugin needs: {tbf.stderr.strip()}")
    finally:
        node.sh("ip", "link", "del", probe, check=False)


@pytest.mark.usefixtures("tbf_and_ifb")
def test_whole_chain_with_bandwidth(runner: Runner) -> None:
    node = runner.node
    net, bridge, cid = node.net_name(), node.bridge_name(), "ch-bw"
    runner.write_list(net, [
        runner.cni_bridge(bridge, ipMasq=True, capabilities={"portMappings": True}),
        {"type": "tuning", "mac": MAC, "sysctl": {ARP_NOTIFY: "1"}, "dataDir": node.temp_dir()},
        {"type": "firewall", "backend": "iptables"},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ])
    c = node.add_container()
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 400_000,
                          "egressRate": 4_000_000, "egressBurst": 400_000}}
    result = runner.add(net, c, cid, caps)
    veth = host_veth_name(net, cid, "eth0")
    assert any(i["name"] == veth and not i.get("sandbox") for i in result["interfaces"]), result
    # Ingress (towards the container): tbf on the host veth. Egress: the veth's ingress is redirected
    # to an ifb that has the tbf.
    assert "tbf" in qdiscs(node, veth) and "ingress" in qdiscs(node, veth), qdiscs(node, veth)
    (ifb,) = ifb_links(node)
    assert "tbf" in qdiscs(node, ifb), qdiscs(node, ifb)
    # The others of the chain did their part too; portmap-style mappings are cni-bridge's own.
    assert container_mac(node, c) == MAC and sysctl(node, c, ARP_NOTIFY) == "1"
    assert firewall_rules(runner, IP4)
    assert any(f"--to-destination {IP4}:80" in line for line in runner.our_rules()), runner.our_rules()
    assert node.ping(c, GW4)

    runner.ok("check", net, c, cid)  # CAP_ARGS from the cache: every plugin passes
    # Another rate on the host veth. (The reference bandwidth CHECK only compares the parameters of a
    # tbf it finds: with the tbf deleted it would pass.)
    node.sh("tc", "qdisc", "replace", "dev", veth, "root", "tbf", "rate", "1mbit", "burst", "50000", "latency", "25ms")
    err = runner.fails("check", net, c, cid)
    assert 'plugin type="bandwidth" failed (check)' in err and "Rate doesn't match" in err, err

    runner.ok("del", net, c, cid)
    assert firewall_rules(runner, IP4) == []
    assert_nothing_left(runner, c, net, extra_links={bridge})


# ------------------------------------------------------------------- before cni-bridge

def test_loopback_before_cni_bridge(runner: Runner) -> None:
    node = runner.node
    net, bridge, cid = node.net_name(), node.bridge_name(), "ch-lo"
    runner.write_list(net, [{"type": "loopback"}, runner.cni_bridge(bridge)])
    c = node.add_container()
    result = runner.add(net, c, cid)
    names = [i["name"] for i in result["interfaces"]]
    assert names[0] == "lo" and "eth0" in names and bridge in names, names
    by_address = {ip["address"]: result["interfaces"][ip["interface"]]["name"] for ip in result["ips"]}
    assert by_address[f"{IP4}/24"] == "eth0", result
    assert by_address["127.0.0.1/8"] == "lo", result
    assert sandbox_interface(result)["mac"] == container_mac(node, c)
    lo = node.link("lo", c)
    assert lo is not None and "UP" in lo["flags"]
    assert node.ping(c, "127.0.0.1") and node.ping(c, GW4)

    runner.ok("check", net, c, cid)
    runner.ok("del", net, c, cid)
    assert_nothing_left(runner, c, net, extra_links={bridge})


def test_reference_bridge_before_cni_bridge_is_refused(runner: Runner) -> None:
    node = runner.node
    net, ref_bridge, our_bridge, cid = node.net_name(), node.bridge_name(), node.bridge_name(), "ch-twice"
    runner.write_list(net, [
        {"type": "bridge", "bridge": ref_bridge, "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": runner.data_dir, "ranges": [[{"subnet": "10.232.5.0/24"}]]}},
        runner.cni_bridge(our_bridge, "10.232.6.0/24", ipMasq=True),
    ])
    c = node.add_container()
    err = runner.fails("add", net, c, cid)
    assert 'plugin type="cni-bridge" failed (add)' in err and "(CNI error code 103)" in err, err
    assert 'interface "eth0" was already created by a plugin before cni-bridge' in err, err
    assert "prevResult" in err and "the partial attachment was deleted" in err, err
    # The runner's DEL took the reference bridge's veth and address back; cni-bridge made nothing (not
    # even its bridge). The reference bridge plugin never deletes its bridge: that one stays.
    assert node.link(our_bridge) is None
    assert_nothing_left(runner, c, net, extra_links={ref_bridge})
