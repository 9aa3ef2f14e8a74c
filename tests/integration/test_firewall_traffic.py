"""Firewall, real traffic: masquerade, published ports, the localhost guard.

Every test runs twice per firewall backend (iptables-nft, iptables-legacy, nftables): once
with the node's FORWARD policy ACCEPT and once with DROP in both families (set before the
first ADD, with the same iptables flavour, or iptables-nft for the nftables backend, as
Docker does): the plugin's own forward accepts must carry all traffic. The
topology and the echo servers are in tests/traffic.py; the node, where the plugin runs,
is the harness's throwaway namespace, and every packet goes between namespaces these
tests created (198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32 and the container subnets).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.plugin import Container, node, requires_plugin  # noqa: F401
from tests.traffic import (NODE2_V4, NODE2_V6, NODE_V4, NODE_V6, OUTSIDE2_V4, OUTSIDE2_V6, OUTSIDE_V4,
                           OUTSIDE_V6, UPLINK, Lab, Probe, addresses, backend, describe, expect, lab,  # noqa: F401
                           probe_all, run_probes, sctp_unsupported_reason)

pytestmark = [pytest.mark.integration, requires_plugin]

V4, V6 = "10.221.0.0/24", "fd00:221::/64"
GW4, GW6 = "10.221.0.1", "fd00:221::1"
TCP = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
UDP = {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}


@pytest.fixture(params=["forward-accept", "forward-drop"])
def lab_policy(request: pytest.FixtureRequest, lab: Lab) -> Lab:  # noqa: F811
    """The lab, with the node's FORWARD policy DROP (both families) in the second variant."""
    if request.param == "forward-drop":
        lab.forward_policy_drop()
    return lab


def published(lab: Lab, ports: list[dict[str, Any]] | None = None, **extra: Any) -> tuple[Container, dict[str, Any]]:
    """A dual-stack container publishing `ports` (TCP 8080->80, UDP 5353->53 by default),
    serving TCP 80 and UDP 53 in both families."""
    conf = lab.network(V4, V6, ports if ports is not None else [TCP, UDP], **extra)
    c = lab.node.add_container()
    lab.add(conf, "ctr-pub", c)
    lab.serve_echo(c, tcp=80, udp=53)
    return c, conf


# --- 1. outbound masquerade -----------------------------------------------------------


def test_outbound_is_masqueraded_as_the_node_address(lab_policy: Lab) -> None:
    lab = lab_policy
    conf = lab.network(V4, V6)
    c = lab.node.add_container()
    lab.add(conf, "ctr-out", c)
    lab.serve_echo(lab.outside, tcp=7000, udp=7001)
    wanted: dict[Probe, str | None] = {}
    for proto, port in (("tcp", 7000), ("udp", 7001)):
        wanted[Probe(c.name, proto, OUTSIDE_V4, port)] = NODE_V4
        wanted[Probe(c.name, proto, OUTSIDE_V6, port)] = NODE_V6
    wanted[Probe(c.name, "icmp", OUTSIDE_V4, 0)] = "echo reply"
    wanted[Probe(c.name, "icmp", OUTSIDE_V6, 0)] = "echo reply"
    run_probes(lab, wanted)


def test_masquerade_exclude_shows_the_container_address(lab_policy: Lab) -> None:
    lab = lab_policy
    lab.add_second_subnet()
    conf = lab.network(V4, V6, ipMasqExclude=["198.51.100.0/24", "2001:db8:1::/64"])
    c = lab.node.add_container()
    v4, v6 = addresses(lab.add(conf, "ctr-excl", c))
    # Unmasqueraded replies need a way back: the outside host routes the container subnets to the node.
    lab.route_outside_to(V4, V6)
    lab.serve_echo(lab.outside, tcp=7000, udp=7001)
    wanted: dict[Probe, str | None] = {}
    for proto, port in (("tcp", 7000), ("udp", 7001)):
        wanted[Probe(c.name, proto, OUTSIDE_V4, port)] = v4  # excluded: the container's own address
        wanted[Probe(c.name, proto, OUTSIDE_V6, port)] = v6
        wanted[Probe(c.name, proto, OUTSIDE2_V4, port)] = NODE2_V4  # not excluded: still masqueraded
        wanted[Probe(c.name, proto, OUTSIDE2_V6, port)] = NODE2_V6
    run_probes(lab, wanted)


# --- 2. published ports ---------------------------------------------------------------


def test_published_ports_from_the_outside_host(lab_policy: Lab) -> None:
    lab = lab_policy
    published(lab)
    wanted: dict[Probe, str | None] = {}
    for proto, port in (("tcp", 8080), ("udp", 5353)):
        # Not masqueraded: the container sees the real client.
        wanted[Probe(lab.outside, proto, NODE_V4, port)] = OUTSIDE_V4
        wanted[Probe(lab.outside, proto, NODE_V6, port)] = OUTSIDE_V6
    run_probes(lab, wanted)


def test_published_ports_from_the_node_itself(lab_policy: Lab) -> None:
    lab = lab_policy
    published(lab)
    n = lab.node.name
    wanted: dict[Probe, str | None] = {}
    for proto, port in (("tcp", 8080), ("udp", 5353)):
        wanted[Probe(n, proto, NODE_V4, port)] = NODE_V4
        wanted[Probe(n, proto, NODE_V6, port)] = NODE_V6
        # 127.0.0.1 cannot leave the node: masqueraded to the bridge's address.
        wanted[Probe(n, proto, "127.0.0.1", port)] = GW4
    run_probes(lab, wanted)


def test_published_ports_hairpin_from_another_container_on_the_bridge(lab_policy: Lab) -> None:
    lab = lab_policy
    _, conf = published(lab)
    other = lab.node.add_container()
    lab.add({k: v for k, v in conf.items() if k != "runtimeConfig"}, "ctr-other", other)
    wanted: dict[Probe, str | None] = {}
    for proto, port in (("tcp", 8080), ("udp", 5353)):
        # Masqueraded to the gateway: otherwise the reply would go straight back over the bridge.
        wanted[Probe(other.name, proto, NODE_V4, port)] = GW4
        wanted[Probe(other.name, proto, NODE_V6, port)] = GW6
    run_probes(lab, wanted)


def test_published_ports_hairpin_from_the_publishing_container_itself(lab_policy: Lab) -> None:
    """With the config a runtime sends (no hairpinMode), as Docker does without its proxy.

    On a node with br_netfilter (bridge-nf-call-iptables=1, the default once the module is
    loaded, as on every Docker or Kubernetes host and on these machines), the DNAT of a
    frame to the bridge's own MAC happens in the bridge's PREROUTING; the kernel then
    bridges the DNATed frame to the container instead of routing it, and a bridge never
    sends a frame back out of the port it came in on unless that port has hairpin mode.
    The next test shows the same traffic answered with hairpinMode: true.
    """
    lab = lab_policy
    c, _ = published(lab)
    wanted: dict[Probe, str | None] = {}
    for proto, port in (("tcp", 8080), ("udp", 5353)):
        wanted[Probe(c.name, proto, NODE_V4, port)] = GW4
        wanted[Probe(c.name, proto, NODE_V6, port)] = GW6
    run_probes(lab, wanted)


def test_published_ports_hairpin_from_the_publishing_container_with_hairpin_mode(lab: Lab) -> None:
    c, _ = published(lab, hairpinMode=True)
    wanted: dict[Probe, str | None] = {}
    for proto, port in (("tcp", 8080), ("udp", 5353)):
        wanted[Probe(c.name, proto, NODE_V4, port)] = GW4
        wanted[Probe(c.name, proto, NODE_V6, port)] = GW6
    run_probes(lab, wanted)


def test_published_ports_on_a_specific_host_ip_only(lab_policy: Lab) -> None:
    lab = lab_policy
    lab.add_second_subnet()  # the node also has 203.0.113.1 and 2001:db8:2::1
    ports = [dict(TCP, hostIP=NODE_V4), dict(UDP, hostIP=NODE_V4),
             {"hostPort": 8443, "containerPort": 80, "protocol": "tcp", "hostIP": NODE_V6}]
    published(lab, ports)
    o, n = lab.outside, lab.node.name
    wanted: dict[Probe, str | None] = {
        Probe(o, "tcp", NODE_V4, 8080): OUTSIDE_V4,
        Probe(o, "udp", NODE_V4, 5353): OUTSIDE_V4,
        Probe(o, "tcp", NODE_V6, 8443): OUTSIDE_V6,
        Probe(n, "tcp", NODE_V4, 8080): NODE_V4,
        Probe(n, "tcp", NODE_V6, 8443): NODE_V6,
        # Every other address of the node: nothing there.
        Probe(o, "tcp", NODE2_V4, 8080): None,
        Probe(o, "udp", NODE2_V4, 5353): None,
        Probe(o, "tcp", NODE_V6, 8080): None,  # an IPv4 hostIP publishes nothing in IPv6
        Probe(o, "udp", NODE_V6, 5353): None,
        Probe(o, "tcp", NODE2_V6, 8443): None,
        Probe(o, "tcp", NODE_V4, 8443): None,  # and an IPv6 one nothing in IPv4
        Probe(n, "tcp", NODE2_V4, 8080): None,
        Probe(n, "tcp", "127.0.0.1", 8080): None,
        Probe(n, "udp", "127.0.0.1", 5353): None,
    }
    run_probes(lab, wanted)


def test_published_sctp_port(lab_policy: Lab) -> None:
    reason = sctp_unsupported_reason()
    if reason:
        pytest.skip(reason)
    lab = lab_policy
    conf = lab.network(V4, V6, [{"hostPort": 9899, "containerPort": 99, "protocol": "sctp"}])
    c = lab.node.add_container()
    lab.add(conf, "ctr-sctp", c)
    lab.serve(c, ("sctp", 4, 99), ("sctp", 6, 99))
    wanted: dict[Probe, str | None] = {
        Probe(lab.outside, "sctp", NODE_V4, 9899): OUTSIDE_V4,
        Probe(lab.outside, "sctp", NODE_V6, 9899): OUTSIDE_V6,
        Probe(lab.node.name, "sctp", NODE_V4, 9899): NODE_V4,
    }
    run_probes(lab, wanted)


# --- 7. localhost guard -----------------------------------------------------------------


def _guard_drops(lab: Lab) -> int:
    """Packets counted by the plugin's localhost guard (raw PREROUTING, or the nftables
    backend's raw-prerouting chain) in the node."""
    if lab.nftables:
        listed = json.loads(lab.sh(lab.node, "nft", "-j", "list", "chain", "inet", "cni-bridge", "raw-prerouting").stdout)
        for obj in listed["nftables"]:
            if obj.get("rule", {}).get("comment") == "cni-bridge shared=localhost-guard":
                return int(next(e["counter"]["packets"] for e in obj["rule"]["expr"] if "counter" in e))
        raise AssertionError(f"no localhost guard in raw-prerouting:\n{lab.ruleset()}")
    for line in lab.iptables(4, "-t", "raw", "-S", "PREROUTING", "-v").stdout.splitlines():
        if "shared=localhost-guard" in line:
            return int(line.split(" -c ")[1].split()[0])
    raise AssertionError(f"no localhost guard in raw PREROUTING:\n{lab.save(4)}")


def _syns_seen(lab: Lab, c: Container) -> int:
    """TCP SYNs to port 80 counted in the container's raw PREROUTING (rule added by the test)."""
    out = lab.iptables(4, "-t", "raw", "-S", "PREROUTING", "-v", ns=c).stdout
    line = next(line for line in out.splitlines() if "--dport 80" in line)
    return int(line.split(" -c ")[1].split()[0])


def test_localhost_guard_keeps_outsiders_from_reaching_published_ports_via_127_0_0_1(lab_policy: Lab) -> None:
    lab = lab_policy
    c, conf = published(lab, [TCP])
    # A counter in the container: every SYN that reaches it (its own namespace, its own table).
    lab.iptables(4, "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", "80", "--tcp-flags", "SYN,ACK", "SYN",
                 ns=c)
    node_mac = lab.mac(lab.node.name, UPLINK)
    guard, seen = _guard_drops(lab), _syns_seen(lab, c)
    # From the outside host: frames to the node's MAC with destination 127.0.0.1:8080.
    lab.send_raw_syns(lab.outside, UPLINK, OUTSIDE_V4, node_mac, "127.0.0.1", 8080, 5)
    assert _syns_seen(lab, c) == seen, f"SYNs to 127.0.0.1:8080 from the outside reached the container\n{lab.ruleset()}"
    assert _guard_drops(lab) == guard + 5, lab.ruleset()
    # A container on the bridge (whose port allows loopback sources: route_localnet) tries too.
    other = lab.node.add_container()
    other_v4, _ = addresses(lab.add({k: v for k, v in conf.items() if k != "runtimeConfig"}, "ctr-other", other))
    bridge_mac = lab.mac(lab.node.name, conf["bridge"])
    lab.send_raw_syns(other, "eth0", other_v4, bridge_mac, "127.0.0.1", 8080, 5)
    assert _syns_seen(lab, c) == seen, "SYNs to 127.0.0.1:8080 from another container reached the container"
    assert _guard_drops(lab) == guard + 10
    # Control: the same frames to the node's real address do get through, and a real client works.
    lab.send_raw_syns(lab.outside, UPLINK, OUTSIDE_V4, node_mac, NODE_V4, 8080, 5)
    assert _syns_seen(lab, c) == seen + 5, "the raw sender itself does not work: the test proves nothing"
    wanted: dict[Probe, str | None] = {Probe(lab.outside, "tcp", NODE_V4, 8080): OUTSIDE_V4,
                                       Probe(lab.node.name, "tcp", "127.0.0.1", 8080): GW4}
    run_probes(lab, wanted)


# --- IPv6 right after the bridge appears ----------------------------------------------------


def test_ipv6_inbound_right_after_the_bridge_is_created(lab: Lab) -> None:  # noqa: F811
    """The first datagram to a published IPv6 port of the first container on a new bridge
    is answered at once (a DNS-like client waits 1 s here).

    The lab turns DAD off for new links in the node (net.ipv6.conf.default.accept_dad=0);
    here it is back at the kernel's default, as on a real node. While the bridge's
    link-local address is tentative (1-2 s after the plugin creates the bridge), the
    kernel sends no neighbour solicitation for packets it forwards out of the bridge
    (ndisc_send_ns needs a usable link-local source when the packet's source is not a
    local address), so the DNATed packet waits in the neighbour queue for about 2 s.
    The other tests (DAD off) show the same datagram answered in milliseconds.
    """
    lab.sh(lab.node, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=1")
    conf = lab.network(V4, V6, [UDP])
    c = lab.node.add_container()
    lab.add(conf, "ctr-fresh", c)
    lab.serve_echo(c, udp=53, families=(6,))
    flags = lab.sh(lab.node, "ip", "-6", "addr", "show", "dev", conf["bridge"]).stdout
    answers = probe_all([Probe(lab.outside, "udp", NODE_V6, 5353, timeout=1.0)])
    assert answers[0].peer == OUTSIDE_V6, (
        f"no answer within 1 s to the first IPv6 datagram; the bridge's addresses when it was sent:\n{flags}\n"
        f"{describe(answers)}")
