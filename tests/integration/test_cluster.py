"""A three-node Kubernetes-like cluster in namespaces, host-gw style, proven by traffic.

Topology (every namespace throwaway, named ``cbt-<8 hex>``)::

    pods -[cni-bridge]- node1 fab0 198.51.100.11 --+
    pods -[cni-bridge]- node2 fab0 198.51.100.12 --+-- bridge "fabric" -- out0 ------ outside
    pods -[cni-bridge]- node3 fab0 198.51.100.13 --+   198.51.100.1       203.0.113.1  203.0.113.50
                                                       (the router)

IPv6 alongside: nodes 2001:db8:100::11-13, router 2001:db8:100::1 and 2001:db8:203::1,
outside 2001:db8:203::50. The cluster CIDR is 10.244.0.0/16 and 2001:db8:244::/48; node N
owns 10.244.N.0/24 and 2001:db8:244:N::/64 (these exist only inside the namespaces).

Each node runs the plugin with one network config, as every node of a cluster does:
``ipMasq`` with the cluster CIDR excluded, ``isDefaultGateway``, the ``portMappings``
capability, its own pod CIDR, stateDir and IPAM dataDir. Routes are what a host-gw fabric
installs: on each node, every other node's pod CIDR via that node's fabric address, and a
default route via the router. The router forwards between the fabric and the outside host;
the outside host routes only the fabric subnet back (never a pod CIDR), so a pod reaches it
only if its node masquerades.

Servers answer with the peer address they saw (tests/traffic.py), so every probe shows
who the packet came from: the pod itself inside the cluster, the node's fabric address
outside it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests import nstools
from tests.plugin import Container, Node, host_local, netconf, requires_plugin, reservations, token
from tests.traffic import Answer, Lab, Probe, addresses, describe, probe_all, start_peer_server, stop_servers, wait_link_ready

pytestmark = [pytest.mark.integration, requires_plugin]

CLUSTER_CIDRS = ["10.244.0.0/16", "2001:db8:244::/48"]
ROUTER_V4, ROUTER_V6 = "198.51.100.1", "2001:db8:100::1"
ROUTER_OUT_V4, ROUTER_OUT_V6 = "203.0.113.1", "2001:db8:203::1"
OUTSIDE_V4, OUTSIDE_V6 = "203.0.113.50", "2001:db8:203::50"
FABRIC_V4, FABRIC_V6 = "198.51.100.0/24", "2001:db8:100::/64"
FABRIC_LINK = "fab0"  # each node's end of its fabric veth
NODE_COUNT = 3

TCP_PORT, UDP_PORT = 80, 53  # every pod serves both, in both families
OUTSIDE_TCP, OUTSIDE_UDP = 7000, 7001
HOST_TCP, HOST_UDP = 8080, 5353

# Published ports as the CNI spec spells them, and as containerd 1.6's CRI sends them
# (go-cni structs without JSON tags: capitalised keys, HostIP always present).
PORTS_LOWERCASE = [{"hostPort": HOST_TCP, "containerPort": TCP_PORT, "protocol": "tcp"},
                   {"hostPort": HOST_UDP, "containerPort": UDP_PORT, "protocol": "udp"}]
PORTS_CAPITALISED = [{"HostPort": HOST_TCP, "ContainerPort": TCP_PORT, "Protocol": "tcp", "HostIP": ""},
                     {"HostPort": HOST_UDP, "ContainerPort": UDP_PORT, "Protocol": "udp", "HostIP": ""}]

SAVE_TOOLS = ("iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save")


@dataclass(frozen=True)
class ClusterNode:
    index: int
    host: Node
    v4: str  # fabric addresses
    v6: str
    conf: dict[str, Any]  # the node's network config, without runtimeConfig

    @property
    def ns(self) -> str:
        return self.host.name


@dataclass(frozen=True)
class Pod:
    node: ClusterNode
    container: Container
    cid: str
    conf: dict[str, Any]  # what its ADD was given
    v4: str
    v6: str

    @property
    def ns(self) -> str:
        return self.container.name


def pod_cidrs(index: int) -> tuple[str, str]:
    return f"10.244.{index}.0/24", f"2001:db8:244:{index}::/64"


def fabric_addresses(index: int) -> tuple[str, str]:
    return f"198.51.100.1{index}", f"2001:db8:100::1{index}"


def ip(ns: str, *args: str) -> None:
    """``ip -n ns args``, which must succeed."""
    Lab.ip(ns, *args)


class Cluster:
    """The router ("fabric") namespace, the outside host and three nodes; see the module doc."""

    def __init__(self) -> None:
        self.nodes: list[ClusterNode] = []
        self.pods: list[Pod] = []
        self.servers: list[subprocess.Popen[bytes]] = []
        self.fabric = ""
        self.outside = ""
        self.network = Node.net_name()  # one network name on every node, as one conflist
        try:
            self._build()
        except BaseException:
            self.cleanup()
            raise

    # --- wiring -----------------------------------------------------------------------

    def _build(self) -> None:
        self.fabric = nstools.create_netns()
        self.outside = nstools.create_netns()
        for ns in (self.fabric, self.outside):
            self._prepare(ns)
        self._wire_router()
        for index in range(1, NODE_COUNT + 1):
            self._add_node(index)
        for node in self.nodes:
            self._route_pod_cidrs(node)
        for ns, link in [(self.outside, "out0"), *((n.ns, FABRIC_LINK) for n in self.nodes)]:
            wait_link_ready(ns, link)

    @staticmethod
    def _prepare(ns: str) -> None:
        # lo up; no DAD on the links made from now on: a link whose link-local address is
        # still tentative sends no neighbour solicitation for packets it forwards, and the
        # first IPv6 packets of a test would wait 1-2 s (see tests/traffic.py).
        ip(ns, "link", "set", "lo", "up")
        nstools.run_in_netns(ns, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0")

    def _wire_router(self) -> None:
        f, o = self.fabric, self.outside
        # A new namespace does not forward, whatever the host does: say so explicitly.
        nstools.run_in_netns(f, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        # No multicast snooping: the fabric floods neighbour discovery like a plain switch.
        ip(f, "link", "add", "fabric", "type", "bridge", "mcast_snooping", "0")
        ip(f, "addr", "add", f"{ROUTER_V4}/24", "dev", "fabric")
        ip(f, "addr", "add", f"{ROUTER_V6}/64", "dev", "fabric", "nodad")
        ip(f, "link", "set", "fabric", "up")
        ip(f, "link", "add", "out0", "type", "veth", "peer", "name", "out0", "netns", o)
        for ns, v4, v6 in ((f, ROUTER_OUT_V4, ROUTER_OUT_V6), (o, OUTSIDE_V4, OUTSIDE_V6)):
            ip(ns, "addr", "add", f"{v4}/24", "dev", "out0")
            ip(ns, "addr", "add", f"{v6}/64", "dev", "out0", "nodad")
            ip(ns, "link", "set", "out0", "up")
        # The outside host knows the way to the nodes, and nothing else: no pod CIDR.
        ip(o, "route", "add", FABRIC_V4, "via", ROUTER_OUT_V4)
        ip(o, "-6", "route", "add", FABRIC_V6, "via", ROUTER_OUT_V6)

    def _add_node(self, index: int) -> None:
        host = Node()
        v4, v6 = fabric_addresses(index)
        pod_v4, pod_v6 = pod_cidrs(index)
        conf = netconf(self.network, host.bridge_name(), host_local(host.data_dir(), pod_v4, pod_v6),
                       ipMasq=True, ipMasqExclude=CLUSTER_CIDRS, isDefaultGateway=True,
                       capabilities={"portMappings": True})
        node = ClusterNode(index, host, v4, v6, conf)
        self.nodes.append(node)  # from here on cleanup() removes it
        self._prepare(host.name)
        port = f"fab{index}"  # its end in the fabric namespace
        ip(self.fabric, "link", "add", port, "type", "veth", "peer", "name", FABRIC_LINK, "netns", host.name)
        ip(self.fabric, "link", "set", port, "master", "fabric", "up")
        ip(host.name, "addr", "add", f"{v4}/24", "dev", FABRIC_LINK)
        ip(host.name, "addr", "add", f"{v6}/64", "dev", FABRIC_LINK, "nodad")
        ip(host.name, "link", "set", FABRIC_LINK, "up")
        ip(host.name, "route", "add", "default", "via", ROUTER_V4)
        ip(host.name, "-6", "route", "add", "default", "via", ROUTER_V6)

    def _route_pod_cidrs(self, node: ClusterNode) -> None:
        """What a host-gw fabric installs: every other node's pod CIDR via that node."""
        for other in self.nodes:
            if other is node:
                continue
            other_v4, other_v6 = pod_cidrs(other.index)
            ip(node.ns, "route", "add", other_v4, "via", other.v4)
            ip(node.ns, "-6", "route", "add", other_v6, "via", other.v6)

    # --- pods -------------------------------------------------------------------------

    def add_pod(self, node: ClusterNode, ports: Sequence[dict[str, Any]] = ()) -> Pod:
        """A pod on ``node`` (ADD as the runtime sends it), serving TCP and UDP in both families."""
        conf = dict(node.conf)
        if ports:
            conf["runtimeConfig"] = {"portMappings": [dict(p) for p in ports]}
        container = node.host.add_container()
        cid = f"pod-{token(4)}"
        v4, v6 = addresses(node.host.add(conf, cid, container))
        pod = Pod(node, container, cid, conf, v4, v6)
        self.pods.append(pod)
        self.serve(pod.ns, TCP_PORT, UDP_PORT)
        return pod

    def delete_pod(self, pod: Pod) -> None:
        """DEL as containerd's CRI sends it: once with the netns, once more without it."""
        pod.node.host.ok("DEL", pod.conf, pod.cid, pod.container.path)
        pod.node.host.ok("DEL", pod.conf, pod.cid, "")
        self.pods.remove(pod)

    # --- servers and probes -----------------------------------------------------------

    def serve(self, ns: str, tcp: int, udp: int) -> None:
        """A server in ``ns`` answering every TCP connection and UDP datagram on these ports,
        both families, with the peer address it saw; returns once it listens."""
        sockets = [(proto, family, port) for proto, port in (("tcp", tcp), ("udp", udp)) for family in (4, 6)]
        self.servers.append(start_peer_server(ns, sockets))

    def expect(self, wanted: dict[Probe, str | None]) -> list[Answer]:
        """Run every probe at once; each must be answered with the wanted peer, or (None)
        not get through. The message shows every probe and every node's rules."""
        answers = probe_all(list(wanted))
        wrong = [a for a in answers if (a.peer != wanted[a.probe] if wanted[a.probe] else a.ok)]
        assert not wrong, (f"unexpected outcome for:\n{describe(wrong)}\n"
                           f"expected: {[(str(a.probe), wanted[a.probe]) for a in wrong]}\n"
                           f"all probes:\n{describe(answers)}\n{self.rulesets()}")
        return answers

    # --- reading state ------------------------------------------------------------------

    @staticmethod
    def saved_rules(node: ClusterNode) -> dict[str, list[str]]:
        """Every rule and chain line of both iptables backends, both families, in the node
        (counters stripped), per save tool."""
        out = {}
        for tool in SAVE_TOOLS:
            text = node.host.sh(tool, check=False).stdout
            out[tool] = [line.split(" [")[0] if line.startswith(":") else line
                         for line in text.splitlines() if line.startswith(("-A", ":"))]
        return out

    def rulesets(self) -> str:
        parts = []
        for node in self.nodes:
            for tool, lines in self.saved_rules(node).items():
                if lines:
                    parts.append(f"--- node{node.index} {tool}\n" + "\n".join(lines))
        return "\n".join(parts)

    def leftovers(self, node: ClusterNode) -> dict[str, list[str]]:
        """What the plugin keeps in a node for its pods, by kind: host veths, its iptables
        rules and chains, records in its stateDir, reservations in its IPAM store."""
        return {
            "veths": [v for v in node.host.veths() if v != FABRIC_LINK],
            "rules": [f"{tool}: {line}" for tool, lines in self.saved_rules(node).items()
                      for line in lines if "cni-bridge" in line or "CNIBR" in line],
            "stateDir records": state_records(node.host.state_dir),
            "reservations": [f"{address} {owner!r}"
                             for address, owner in reservations(node.conf["ipam"]["dataDir"], self.network).items()],
        }

    # --- clean-up -----------------------------------------------------------------------

    def cleanup(self) -> None:
        stop_servers(self.servers)
        for node in self.nodes:
            node.host.cleanup()
        for ns in (self.fabric, self.outside):
            if ns:
                nstools.delete_netns(ns)


def state_records(state_dir: str) -> list[str]:
    """Files in a stateDir that describe something installed: everything but the
    directory's own lock and generation stamp."""
    found = []
    for root, _, files in os.walk(state_dir):
        for name in files:
            path = os.path.relpath(os.path.join(root, name), state_dir)
            if path not in ("lock", "generation"):
                found.append(path)
    return sorted(found)


def root_link_names() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """The cluster; every namespace, server and temp dir removed afterwards, also on failure.
    Afterwards no bridge or host veth of the plugin may show up in the root namespace."""
    c = Cluster()
    try:
        yield c
    finally:
        c.cleanup()
    ours = set().union(*(n.host.bridges for n in c.nodes), *(n.host.host_veths for n in c.nodes))
    leaked = ours & root_link_names()
    assert not leaked, f"links leaked into the root network namespace: {sorted(leaked)}"


def rule_lines(saved: dict[str, list[str]]) -> dict[str, list[str]]:
    """Only the ``-A`` lines: the plugin may leave a table it created, empty, behind."""
    return {tool: [line for line in lines if line.startswith("-A")] for tool, lines in saved.items()}


@pytest.fixture(params=["forward-accept", "forward-drop"])
def forward_policy(request: pytest.FixtureRequest, cluster: Cluster) -> str:
    """In the second variant every node's FORWARD policy is DROP in both families (as on
    any host with Docker), with no other rule: the plugin's own accepts must carry the
    traffic. Pod to pod across nodes is not among it: a connection that arrives from the
    fabric for a pod is let in by the fabric's own rules (flannel adds accepts for the
    cluster CIDR); the plugin, like the reference plugins, lets in only replies and
    traffic to published ports."""
    if request.param == "forward-drop":
        for node in cluster.nodes:
            for tool in ("iptables", "ip6tables"):
                node.host.sh(tool, "-w", "-P", "FORWARD", "DROP")
    return str(request.param)


# --- pod to pod across nodes ----------------------------------------------------------------


def test_pods_on_different_nodes_see_each_other_s_own_address(cluster: Cluster) -> None:
    """No masquerade inside the cluster CIDR: every pod's server sees the client pod itself,
    across nodes (through the fabric routes) and both families, TCP and UDP."""
    pods = [cluster.add_pod(node) for node in cluster.nodes]
    wanted: dict[Probe, str | None] = {}
    for client in pods:
        for server in pods:
            if server is client:
                continue
            for proto, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
                wanted[Probe(client.ns, proto, server.v4, port)] = client.v4
                wanted[Probe(client.ns, proto, server.v6, port)] = client.v6
    cluster.expect(wanted)


# --- pod to the outside -----------------------------------------------------------------------


def test_pods_reach_the_outside_masqueraded_as_their_node_s_fabric_address(cluster: Cluster,
                                                                           forward_policy: str) -> None:
    pods = [cluster.add_pod(node) for node in cluster.nodes]
    # Masquerade is necessary: the outside host has no way back to a pod address.
    for pod in pods:
        for address in (pod.v4, pod.v6):
            route = nstools.run_in_netns(cluster.outside, "ip", "route", "get", address, check=False)
            assert route.returncode != 0, f"the outside host has a route to {address}: {route.stdout}"
    cluster.serve(cluster.outside, OUTSIDE_TCP, OUTSIDE_UDP)
    wanted: dict[Probe, str | None] = {}
    for pod in pods:
        for proto, port in (("tcp", OUTSIDE_TCP), ("udp", OUTSIDE_UDP)):
            wanted[Probe(pod.ns, proto, OUTSIDE_V4, port)] = pod.node.v4
            wanted[Probe(pod.ns, proto, OUTSIDE_V6, port)] = pod.node.v6
    cluster.expect(wanted)


# --- a hostPort ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ports", [
    pytest.param(PORTS_LOWERCASE, id="lowercase-keys"),
    pytest.param(PORTS_CAPITALISED, id="containerd-capitalised-keys"),
])
def test_host_port_on_node2_is_reached_from_a_pod_on_node1(cluster: Cluster, forward_policy: str,
                                                           ports: list[dict[str, Any]]) -> None:
    """Node 2's hostPort through its fabric address: from a pod on node 1 the server sees
    node 1's fabric address (the destination is outside the cluster CIDR, so node 1
    masquerades); from the outside host it sees the outside host (node 2 only DNATs)."""
    node1, node2, node3 = cluster.nodes
    cluster.add_pod(node2, ports)
    client = cluster.add_pod(node1)
    wanted: dict[Probe, str | None] = {}
    for proto, port in (("tcp", HOST_TCP), ("udp", HOST_UDP)):
        wanted[Probe(client.ns, proto, node2.v4, port)] = node1.v4
        wanted[Probe(client.ns, proto, node2.v6, port)] = node1.v6
        wanted[Probe(cluster.outside, proto, node2.v4, port)] = OUTSIDE_V4
        wanted[Probe(cluster.outside, proto, node2.v6, port)] = OUTSIDE_V6
        # Published on node 2 only.
        wanted[Probe(client.ns, proto, node3.v4, port)] = None
    cluster.expect(wanted)


# --- deleting every pod ----------------------------------------------------------------------------

# Rules of someone else on every node (what a host-gw fabric such as flannel adds for the
# cluster CIDR): DEL must leave them exactly as they are.
FOREIGN_RULES = [("iptables", "-A", "FORWARD", "-s", CLUSTER_CIDRS[0], "-j", "ACCEPT"),
                 ("iptables", "-A", "FORWARD", "-d", CLUSTER_CIDRS[0], "-j", "ACCEPT"),
                 ("ip6tables", "-A", "FORWARD", "-s", CLUSTER_CIDRS[1], "-j", "ACCEPT"),
                 ("ip6tables", "-A", "FORWARD", "-d", CLUSTER_CIDRS[1], "-j", "ACCEPT")]


def test_deleting_every_pod_leaves_every_node_clean(cluster: Cluster) -> None:
    node1, node2, node3 = cluster.nodes
    before = {}
    for node in cluster.nodes:
        for tool, *args in FOREIGN_RULES:
            node.host.sh(tool, "-w", *args)
        before[node.index] = cluster.saved_rules(node)
    # Two pods on node 2, one of them publishing; one on each other node. Traffic through
    # all of it, so conntrack entries and every kind of rule exist when the pods go.
    published = cluster.add_pod(node2, PORTS_LOWERCASE)
    plain = cluster.add_pod(node2)
    pod1, pod3 = cluster.add_pod(node1), cluster.add_pod(node3)
    cluster.serve(cluster.outside, OUTSIDE_TCP, OUTSIDE_UDP)
    cluster.expect({Probe(pod1.ns, "tcp", plain.v4, TCP_PORT): pod1.v4,
                    Probe(pod3.ns, "udp", published.v6, UDP_PORT): pod3.v6,
                    Probe(pod1.ns, "tcp", node2.v4, HOST_TCP): node1.v4,
                    Probe(pod3.ns, "udp", node2.v6, HOST_UDP): node3.v6,
                    Probe(plain.ns, "tcp", OUTSIDE_V4, OUTSIDE_TCP): node2.v4,
                    Probe(published.ns, "udp", OUTSIDE_V6, OUTSIDE_UDP): node2.v6})
    # Every kind of leftover is seen while pods run on a node, or the checks below prove nothing.
    for node in cluster.nodes:
        unseen = [kind for kind, found in cluster.leftovers(node).items() if not found]
        assert not unseen, f"node{node.index} shows no {unseen} while it has pods"

    for pod in list(cluster.pods):
        cluster.delete_pod(pod)

    problems = [f"node{node.index} {kind}: {item}" for node in cluster.nodes
                for kind, found in cluster.leftovers(node).items() for item in found]
    assert not problems, "left after DEL of every pod:\n" + "\n".join(problems)
    for node in cluster.nodes:
        assert rule_lines(cluster.saved_rules(node)) == rule_lines(before[node.index]), (
            f"node{node.index}'s rules differ from before the first ADD\n{cluster.rulesets()}")
