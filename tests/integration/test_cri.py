"""End to end the Kubernetes way: containerd 1.6.20's CRI plugin (Debian 12), driven like a
kubelet through the CRI ``runtime.v1`` gRPC API, runs pods on the shipped network list
(conf/10-cni-bridge.conflist on test-owned names, dual stack, ipMasq, hairpin,
capabilities portMappings) with the built plugin.

Each test starts its own containerd with the CRI plugin in a throwaway node network
namespace wired to an "outside" host (tests/traffic.py's Lab: node 198.51.100.1 and
2001:db8:1::1, outside .2 and ::2); tests/cri_harness.py says how containerd is configured
and kept off the real host, and how the client is built (tests/cri_api.proto). Pods run the
locally built pause image (busybox, a sleep loop); the pods that serve run one container,
busybox ``httpd``, from the same image, and ``ExecSync`` in it is how a pod talks to the others.

Proved here, each through containerd and nothing else:

- RunPodSandbox gives a pod one address per family: PodSandboxStatus reports the IPv4 one in
  ``network.ip`` and the IPv6 one in ``network.additional_ips``; while the pod runs, the
  IPAM store holds both (owned by the sandbox ID), its host veth is on the bridge, iptables
  rules carry its ID, the stateDir has its record, and the CRI plugin's libcni cached the
  result.
- A hostPort (``port_mappings``, which containerd passes as ``HostPort``/``ContainerPort``/
  ``Protocol``/``HostIP``) answers from the node through 127.0.0.1 and the node's own
  addresses (IPv4 and IPv6), from the outside host through the node's addresses, from
  another pod and from the publishing pod itself (hairpin) through the node's address; the
  node reaches pods directly on both families; pods reach each other on both families; a
  pod's traffic to the outside host leaves with the node's address (ipMasq).
- A second pod publishing the same hostPort fails in RunPodSandbox with cni-bridge's
  "already published" error (code 110) naming the first pod; nothing of the failed sandbox
  is left (containerd sends DEL after the failed ADD), it is not listed, and the first pod
  still serves on that port.
- With the reference ``bandwidth`` plugin chained after cni-bridge (capability
  ``bandwidth``), the annotations ``kubernetes.io/ingress-bandwidth`` and
  ``kubernetes.io/egress-bandwidth`` become a tbf qdisc at those rates on the pod's host
  veth and on an ifb device that the host veth's ingress is redirected to; the pod still
  serves; teardown removes the ifb too.
- StopPodSandbox (DEL with the netns and prevResult) and RemovePodSandbox (DEL again with an
  empty CNI_NETNS and no prevResult) both succeed, and after each nothing of the pod is left:
  host veth, reservations, rules and chains (both families, both iptables backends), stateDir
  records and port claims, libcni cache entry; the last pod's teardown takes the shared
  rules and chains with it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests import warm
from tests.containerd_harness import guarded, nft_tables, node_rules, read_text
from tests.cri_harness import (INDEX, WEB_COMMAND, WGET, CniNetwork, CriContainerd, Pod, cni_bridge_network,
                               http_get, skip_reason, url)
from tests.polling import wait_for
from tests.plugin import Node, kind, node, reservations  # noqa: F401
from tests.traffic import NODE_V4, NODE_V6, OUTSIDE_V4, OUTSIDE_V6, Lab

grpc = pytest.importorskip("grpc", reason="grpcio is missing (the test extra: pip install -e '.[test]')")
_SKIP = skip_reason()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

HOST_PORT = 8080
ECHO_PORT = 7007
# Kubernetes' bandwidth annotations are bits per second; tc shows tbf rates in bytes per second.
INGRESS, EGRESS = "1M", "2M"
INGRESS_BYTES, EGRESS_BYTES = 1_000_000 // 8, 2_000_000 // 8
CHAIN = re.compile(r"\bCNIBR-[A-Z]+-[0-9a-f]{8,}\b")
SAVERS = ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save")


def _default_backend() -> str:
    out = subprocess.run(["iptables", "-V"], capture_output=True, text=True, check=False).stdout
    return "legacy" if "legacy" in out else "nft"


@pytest.fixture(params=["iptables", "nftables"])
def backend(request: pytest.FixtureRequest) -> str:
    """The plugin's firewallBackend: every CRI test runs on both."""
    return str(request.param)


@pytest.fixture
def lab(node: Node) -> Iterator[Lab]:  # noqa: F811
    """The node wired to an outside host (addresses on both ends, default routes to it)."""
    wired = Lab(node, _default_backend())
    try:
        yield wired
    finally:
        wired.cleanup()


@pytest.fixture
def cri(node: Node, lab: Lab) -> Iterator[CriContainerd]:  # noqa: F811
    """containerd with the CRI plugin for this test, not started yet (the test gives it its
    network list); stopped and cleaned afterwards, also on failure, and the host checked."""
    daemon = CriContainerd(node)
    with guarded(daemon):
        yield daemon


# --- what the tests look at ---------------------------------------------------------------------

@dataclass
class Attached:
    """A running pod as the test saw it, to check later that none of it is left."""

    pod: Pod
    v4: str
    v6: str
    veth: str
    chains: set[str]


def _all_saves(node: Node) -> str:  # noqa: F811
    return "\n".join(node.sh(tool, check=False).stdout for tool in SAVERS)


def state_files_naming(state_dir: str, pod_id: str) -> list[str]:
    """Files of the plugin's stateDir (records, port claims) whose name or content names the pod."""
    found = []
    for top, _dirs, files in os.walk(state_dir):
        for name in files:
            path = os.path.join(top, name)
            if pod_id in name or pod_id in read_text(path):
                found.append(os.path.relpath(path, state_dir))
    return found


def assert_attached(node: Node, cri: CriContainerd, net: CniNetwork, pod: Pod) -> Attached:  # noqa: F811
    """While the pod runs: its addresses as the CRI reports them, and everything ADD made."""
    ip, additional = cri.pod_ips(pod)
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(net.v4), f"network.ip {ip} is not in {net.v4}"
    assert len(additional) == 1 and ipaddress.ip_address(additional[0]) in ipaddress.ip_network(net.v6), \
        f"additional_ips {additional}: expected one address of {net.v6}"
    v6 = additional[0]
    # The IPAM store: one file per address, "<container ID>\r\n<ifname>"; the ID is the sandbox's.
    store = reservations(net.data_dir, net.name)
    for address in (ip, v6):
        assert store.get(address, "").splitlines() == [pod.id, "eth0"], f"reservation of {address}: {store}"
    veth = host_veth_name(net.name, pod.id, "eth0")
    node.host_veths.add(veth)
    link = node.link(veth)
    assert link is not None and link.get("master") == net.bridge, f"host veth {veth}: {link}"
    rules = node_rules(node, f"id={pod.id} if=eth0")
    assert rules, f"no firewall rule names the pod {pod.id}"
    assert state_files_naming(net.state_dir, pod.id), f"no stateDir record names {pod.id}"
    path = cri.cache_file(pod.id)
    assert os.path.isfile(path), f"libcni cached no result at {path}: {os.listdir(cri.cache_dir)}"
    with open(path, encoding="utf-8") as handle:
        cached = json.load(handle)
    assert cached.get("containerId") == pod.id and cached.get("networkName") == net.name, cached
    cached_ips = {a["address"].split("/")[0] for a in cached["result"]["ips"]}
    assert cached_ips == {ip, v6}, f"cached result {cached_ips}, pod {ip} {v6}"
    log = read_text(net.log_file)
    assert f"ADD {net.name}/{pod.id}: attached eth0 ({ip}/24, {v6}/64)" in log, log
    return Attached(pod, ip, v6, veth, {chain for line in rules for chain in CHAIN.findall(line)})


def leftovers(node: Node, cri: CriContainerd, net: CniNetwork, seen: Attached) -> list[str]:  # noqa: F811
    """Everything of the pod still present after its teardown (empty: all gone)."""
    pod_id = seen.pod.id
    problems = [f"rule left: {line}" for line in node_rules(node, f"id={pod_id}")]
    saves = _all_saves(node)
    problems += [f"chain {chain} left" for chain in seen.chains if re.search(rf"\b{chain}\b", saves)]
    if node.link(seen.veth) is not None:
        problems.append(f"host veth {seen.veth} left")
    held = [ip for ip, owner in reservations(net.data_dir, net.name).items() if pod_id in owner]
    held += [ip for ip in (seen.v4, seen.v6) if ip in reservations(net.data_dir, net.name)]
    if held:
        problems.append(f"reservations left: {sorted(set(held))}")
    files = state_files_naming(net.state_dir, pod_id)
    if files:
        problems.append(f"stateDir files still name the pod: {files}")
    if os.path.exists(cri.cache_file(pod_id)):
        problems.append(f"libcni cache entry {cri.cache_file(pod_id)} left")
    return problems


def assert_network_empty(node: Node, cri: CriContainerd, net: CniNetwork) -> None:  # noqa: F811
    """After the last pod: no rule or chain of cni-bridge at all, no veth, no reservation, no
    record, no cache entry."""
    assert node_rules(node, "cni-bridge") == [], "rules of cni-bridge left after the last pod"
    assert "CNIBR-" not in _all_saves(node), "chains of cni-bridge left after the last pod"
    assert "table inet cni-bridge" not in nft_tables(node), "the nftables table left after the last pod"
    assert [v for v in node.veths() if not v.startswith("up0")] == [], f"veths left: {node.veths()}"
    assert reservations(net.data_dir, net.name) == {}, reservations(net.data_dir, net.name)
    records = [os.path.join(top, f) for top, _, files in os.walk(net.state_dir) for f in files
               if "/attachments" in top or "/ports" in top]
    assert records == [], f"stateDir records left: {records}"
    results = os.path.join(cri.cache_dir, "results")
    assert not os.path.isdir(results) or os.listdir(results) == [], os.listdir(results)
    assert cri.listed_pods() == []
    warm.assert_served(node.helper, net.state_dir, at_least=2)  # containerd's ADD and DELs went through it


def teardown_pod(node: Node, cri: CriContainerd, net: CniNetwork, seen: Attached) -> None:  # noqa: F811
    """Stop (DEL with the netns): nothing left; Remove (DEL without it) succeeds too, nothing
    comes back, and the pod is no longer listed."""
    cri.stop_pod(seen.pod)
    left = leftovers(node, cri, net, seen)
    assert not left, f"after StopPodSandbox:\n" + "\n".join(left) + f"\nplugin log:\n{read_text(net.log_file)}"
    cri.remove_pod(seen.pod)
    left = leftovers(node, cri, net, seen)
    assert not left, f"after RemovePodSandbox:\n" + "\n".join(left)
    assert seen.pod.id not in cri.listed_pods()


def fetch_in_pod(cri: CriContainerd, container_id: str, target: str) -> tuple[bool, str]:
    """busybox wget in a pod's container: (got the index page, what it printed)."""
    code, out = cri.exec(container_id, *WGET, target)
    return code == 0 and out.strip() == INDEX, f"exit {code}: {out.strip()}"


def serving(cri: CriContainerd, node: Node, pod: Pod, address: str) -> str:  # noqa: F811
    """Start busybox httpd in the pod and wait until the node gets its page; the container ID."""
    container_id = cri.start_container(pod, "web", WEB_COMMAND)
    wait_for(f"httpd in pod {pod.name}", lambda: http_get(node.name, address, 80))
    return container_id


# --- the tests -----------------------------------------------------------------------------------

def test_cri_pods_get_both_families_publish_a_host_port_reach_each_other_and_leave_nothing(
        node: Node, lab: Lab, cri: CriContainerd, backend: str) -> None:  # noqa: F811
    net = cni_bridge_network(node, firewall_backend=backend)
    cri.start_with(net)
    web = assert_attached(node, cri, net, cri.run_pod("web", ports=[(HOST_PORT, 80)]))
    client = assert_attached(node, cri, net, cri.run_pod("client"))
    assert len({web.v4, web.v6, client.v4, client.v6}) == 4, (web, client)
    web_ctr = serving(cri, node, web.pod, web.v4)
    client_ctr = serving(cri, node, client.pod, client.v4)

    # The node reaches the pod on both families; the published port answers through
    # 127.0.0.1 and the node's addresses, from the node and from the outside host.
    failures = []
    for ns, host, port in ((node.name, web.v6, 80), (node.name, "127.0.0.1", HOST_PORT),
                           (node.name, NODE_V4, HOST_PORT), (node.name, NODE_V6, HOST_PORT),
                           (lab.outside, NODE_V4, HOST_PORT), (lab.outside, NODE_V6, HOST_PORT)):
        ok, text = http_get(ns, host, port)
        if not ok:
            failures.append(f"{url(host, port)} from {'node' if ns == node.name else 'outside'}: {text}")
    assert not failures, "\n".join(failures) + f"\nnode ruleset:\n{lab.ruleset()}"

    # Pod to pod on both families; a pod to the published port through the node's address
    # (DNAT back onto the bridge), and the publishing pod to its own port (hairpin).
    for container_id, target in ((client_ctr, url(web.v4, 80)), (client_ctr, url(web.v6, 80)),
                                 (client_ctr, url(NODE_V4, HOST_PORT)), (web_ctr, url(NODE_V4, HOST_PORT))):
        ok, text = fetch_in_pod(cri, container_id, target)
        who = "client" if container_id == client_ctr else "web"
        assert ok, f"{who} pod -> {target}: {text}\nnode ruleset:\n{lab.ruleset()}"

    # Leaving the node, a pod's traffic carries the node's address (ipMasq), both families.
    lab.serve_echo(lab.outside, tcp=ECHO_PORT)
    for outside, node_address in ((OUTSIDE_V4, NODE_V4), (OUTSIDE_V6, NODE_V6)):
        code, out = cri.exec(client_ctr, "/bin/busybox", "timeout", "5", "nc", outside, str(ECHO_PORT))
        assert out.strip() == node_address, f"the outside host saw {out.strip()!r} (exit {code}), not the node"

    teardown_pod(node, cri, net, web)
    # The other pod is untouched and still serves.
    ok, text = http_get(node.name, client.v4, 80)
    assert ok, f"the client pod stopped serving after the web pod's teardown: {text}"
    teardown_pod(node, cri, net, client)
    assert_network_empty(node, cri, net)


def test_cri_second_pod_on_a_taken_host_port_fails_with_code_110_and_leaves_nothing(
        node: Node, lab: Lab, cri: CriContainerd, backend: str) -> None:  # noqa: F811
    net = cni_bridge_network(node, firewall_backend=backend)
    cri.start_with(net)
    first = assert_attached(node, cri, net, cri.run_pod("first", ports=[(HOST_PORT, 80)]))
    serving(cri, node, first.pod, first.v4)
    rules_before = node_rules(node, "cni-bridge")

    with pytest.raises(grpc.RpcError) as failed:
        cri.run_pod("second", ports=[(HOST_PORT, 8000)])
    details = failed.value.details() or ""
    assert "already published" in details and first.pod.id in details, details
    assert 'plugin type="cni-bridge"' in details, details
    found = re.search(r'failed to setup network for sandbox "([0-9a-f]{64})"', details)
    assert found, details
    second_id = found.group(1)

    # containerd removed the sandbox; DEL after the failed ADD left nothing of it either.
    assert cri.listed_pods() == [first.pod.id]
    assert node_rules(node, f"id={second_id}") == []
    assert node.link(host_veth_name(net.name, second_id, "eth0")) is None
    assert [ip for ip, owner in reservations(net.data_dir, net.name).items() if second_id in owner] == []
    assert state_files_naming(net.state_dir, second_id) == []
    assert not os.path.exists(cri.cache_file(second_id))
    assert node_rules(node, "cni-bridge") == rules_before, "the failed pod changed the rules"

    # The first pod still holds the port and serves on it.
    for ns, host in ((node.name, "127.0.0.1"), (node.name, NODE_V4), (lab.outside, NODE_V4)):
        ok, text = http_get(ns, host, HOST_PORT)
        assert ok, f"{url(host, HOST_PORT)} after the failed pod: {text}"

    teardown_pod(node, cri, net, first)
    assert_network_empty(node, cri, net)


def test_cri_bandwidth_annotations_shape_the_pod_with_the_reference_bandwidth_plugin_chained(
        node: Node, lab: Lab, cri: CriContainerd, backend: str) -> None:  # noqa: F811
    net = cni_bridge_network(node, chained=[{"type": "bandwidth", "capabilities": {"bandwidth": True}}],
                             firewall_backend=backend)
    cri.start_with(net)
    pod = cri.run_pod("shaped", ports=[(HOST_PORT, 80)], annotations={
        "kubernetes.io/ingress-bandwidth": INGRESS, "kubernetes.io/egress-bandwidth": EGRESS})
    seen = assert_attached(node, cri, net, pod)
    serving(cri, node, pod, seen.v4)
    ok, text = http_get(node.name, NODE_V4, HOST_PORT)
    assert ok, f"published port of the shaped pod: {text}"

    # Traffic to the pod leaves the host veth through a tbf at the ingress rate; traffic from
    # the pod enters the host veth, is redirected to an ifb and leaves that through a tbf at
    # the egress rate.
    veth_qdiscs = qdiscs(node, seen.veth)
    assert tbf_rates(veth_qdiscs) == [INGRESS_BYTES], veth_qdiscs
    assert any(q["kind"] == "ingress" for q in veth_qdiscs), veth_qdiscs
    ifbs = [link["ifname"] for link in node.links() if kind(link) == "ifb"]
    assert len(ifbs) == 1, f"expected one ifb in the node: {ifbs}"
    ifb_qdiscs = qdiscs(node, ifbs[0])
    assert tbf_rates(ifb_qdiscs) == [EGRESS_BYTES], ifb_qdiscs
    redirect = node.sh("tc", "filter", "show", "dev", seen.veth, "parent", "ffff:").stdout
    assert f"Egress Redirect to device {ifbs[0]}" in redirect, redirect

    teardown_pod(node, cri, net, seen)
    assert [link["ifname"] for link in node.links() if kind(link) == "ifb"] == [], "the ifb is left"
    assert_network_empty(node, cri, net)


def qdiscs(node: Node, dev: str) -> list[dict[str, Any]]:  # noqa: F811
    out = node.sh("tc", "-j", "qdisc", "show", "dev", dev).stdout
    found: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return found


def tbf_rates(found: list[dict[str, Any]]) -> list[int]:
    """The rate (bytes per second) of each tbf qdisc."""
    return [int(q.get("options", {}).get("rate", -1)) for q in found if q.get("kind") == "tbf"]
