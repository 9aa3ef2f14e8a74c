"""Firewall, real traffic: isolated networks and internal networks, on both iptables backends.

Negative probes (drops) only end by timing out: each test runs all of its probes at
once, so it waits for one timeout, not one per probe. Topology and servers: tests/traffic.py.
"""

from __future__ import annotations

import pytest

from tests.plugin import node, requires_plugin  # noqa: F401
from tests.traffic import (NODE_V4, NODE_V6, OUTSIDE_V4, OUTSIDE_V6, Lab, Probe, addresses, backend,  # noqa: F401
                           lab, run_probes)

pytestmark = [pytest.mark.integration, requires_plugin]


# --- 4. isolate ------------------------------------------------------------------------


def test_isolated_networks_cannot_reach_each_other_but_published_ports_can(lab: Lab) -> None:  # noqa: F811
    net_a = lab.network("10.221.0.0/24", "fd00:221::/64", [{"hostPort": 8081, "containerPort": 80, "protocol": "tcp"},
                                                            {"hostPort": 5301, "containerPort": 53, "protocol": "udp"}],
                        isolate=True)
    net_b = lab.network("10.222.0.0/24", "fd00:222::/64", [{"hostPort": 8082, "containerPort": 80, "protocol": "tcp"},
                                                            {"hostPort": 5302, "containerPort": 53, "protocol": "udp"}],
                        isolate=True)
    a, b = lab.node.add_container(), lab.node.add_container()
    a4, a6 = addresses(lab.add(net_a, "ctr-a", a))
    b4, b6 = addresses(lab.add(net_b, "ctr-b", b))
    for c in (a, b):
        lab.serve_echo(c, tcp=80, udp=53)
    lab.serve_echo(lab.outside, tcp=7000)
    wanted: dict[Probe, str | None] = {}
    for src, dst4, dst6 in ((a, b4, b6), (b, a4, a6)):
        for dst in (dst4, dst6):
            wanted[Probe(src.name, "tcp", dst, 80)] = None
            wanted[Probe(src.name, "udp", dst, 53)] = None
            wanted[Probe(src.name, "icmp", dst, 0)] = None
    # Each network's published ports stay reachable from the other one through the node's
    # address. The client's own ipMasq masquerades what leaves its network, as Docker does
    # (! -o bridge): the server sees the gateway of its own bridge.
    for src, port, udp_port, gw4, gw6 in ((a, 8082, 5302, "10.222.0.1", "fd00:222::1"),
                                          (b, 8081, 5301, "10.221.0.1", "fd00:221::1")):
        wanted[Probe(src.name, "tcp", NODE_V4, port)] = gw4
        wanted[Probe(src.name, "tcp", NODE_V6, port)] = gw6
        wanted[Probe(src.name, "udp", NODE_V4, udp_port)] = gw4
        wanted[Probe(src.name, "udp", NODE_V6, udp_port)] = gw6
        # Isolation is between bridges only: the way out stays open.
        wanted[Probe(src.name, "tcp", OUTSIDE_V4, 7000)] = NODE_V4
        wanted[Probe(src.name, "tcp", OUTSIDE_V6, 7000)] = NODE_V6
    run_probes(lab, wanted)


def test_isolated_network_and_a_plain_network_cannot_reach_each_other(lab: Lab) -> None:  # noqa: F811
    """isolate on one side is enough: the drops match both directions of its bridge."""
    net_a = lab.network("10.221.0.0/24", "fd00:221::/64", isolate=True)
    net_b = lab.network("10.222.0.0/24", "fd00:222::/64")
    a, b = lab.node.add_container(), lab.node.add_container()
    a4, a6 = addresses(lab.add(net_a, "ctr-a", a))
    b4, b6 = addresses(lab.add(net_b, "ctr-b", b))
    for c in (a, b):
        lab.serve_echo(c, tcp=80)
    wanted: dict[Probe, str | None] = {}
    for src, dst4, dst6 in ((a, b4, b6), (b, a4, a6)):
        for dst in (dst4, dst6):
            wanted[Probe(src.name, "tcp", dst, 80)] = None
            wanted[Probe(src.name, "icmp", dst, 0)] = None
    run_probes(lab, wanted)


# --- 5. internal ---------------------------------------------------------------------------


def test_internal_network_has_no_way_out_even_with_a_route(lab: Lab) -> None:  # noqa: F811
    internal = lab.network("10.223.0.0/24", "fd00:223::/64", ipMasq=None, isDefaultGateway=None, internal=True)
    # A control network made the same way but not internal: it shows the path would work.
    control = lab.network("10.224.0.0/24", "fd00:224::/64", ipMasq=None)
    i1, i2, c = lab.node.add_container(), lab.node.add_container(), lab.node.add_container()
    i4, i6 = addresses(lab.add(internal, "ctr-int", i1))
    i24, i26 = addresses(lab.add(internal, "ctr-int2", i2))
    c4, c6 = addresses(lab.add(control, "ctr-ctl", c))
    assert [r for r in lab.node.routes(i1, 4) if r["dst"] == "default"] == [], "internal: no default route"
    # The container's default route by hand, and routes back on the outside host: only
    # the firewall is left to stop the traffic.
    lab.sh(i1, "ip", "route", "add", "default", "via", "10.223.0.1")
    lab.sh(i1, "ip", "-6", "route", "add", "default", "via", "fd00:223::1")
    lab.route_outside_to("10.223.0.0/24", "fd00:223::/64", "10.224.0.0/24", "fd00:224::/64")
    lab.serve_echo(lab.outside, tcp=7000, udp=7001)
    for ctr in (i1, i2, c):
        lab.serve_echo(ctr, tcp=80)
    wanted: dict[Probe, str | None] = {}
    for out4, out6, src, own4, own6 in ((None, None, i1, i4, i6), (c4, c6, c, c4, c6)):
        wanted[Probe(src.name, "tcp", OUTSIDE_V4, 7000)] = out4
        wanted[Probe(src.name, "tcp", OUTSIDE_V6, 7000)] = out6
        wanted[Probe(src.name, "udp", OUTSIDE_V4, 7001)] = out4
        wanted[Probe(src.name, "udp", OUTSIDE_V6, 7001)] = out6
        wanted[Probe(src.name, "icmp", OUTSIDE_V4, 0)] = out4 and "echo reply"
        wanted[Probe(src.name, "icmp", OUTSIDE_V6, 0)] = out6 and "echo reply"
        # And in: the outside host, with its route, reaches only the control container.
        wanted[Probe(lab.outside, "tcp", own4, 80)] = out4 and OUTSIDE_V4
        wanted[Probe(lab.outside, "tcp", own6, 80)] = out6 and OUTSIDE_V6
    # Inside the internal network, containers talk to each other.
    wanted[Probe(i1.name, "tcp", i24, 80)] = i4
    wanted[Probe(i1.name, "tcp", i26, 80)] = i6
    wanted[Probe(i2.name, "icmp", i4, 0)] = "echo reply"
    run_probes(lab, wanted)


def test_publishing_a_port_on_an_internal_network_is_a_config_error(lab: Lab) -> None:  # noqa: F811
    conf = lab.network("10.223.0.0/24", "fd00:223::/64", [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                       ipMasq=None, isDefaultGateway=None, internal=True)
    c = lab.node.add_container()
    before, links = lab.ruleset(), lab.node.link_names()
    r = lab.run("ADD", conf, "ctr-int", c)
    assert r.rc == 1 and r.code == 7, r
    assert "portMappings" in r.msg, r
    assert lab.ruleset() == before
    assert lab.node.link_names() == links
    assert lab.node.link_names(c) == {"lo"}
