"""Datapath: containers on one bridge talk to each other and to the gateway; MAC and MTU.

The plugin runs inside a throwaway node namespace (tests/plugin.py); every packet goes
between namespaces these tests created.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.plugin import Node, host_local, netconf, node, requires_plugin  # noqa: F401

pytestmark = [pytest.mark.integration, requires_plugin]

V4 = "10.201.0.0/24"
V6 = "fd00:201::/64"


def dual_stack(n: Node, **extra: Any) -> dict[str, Any]:
    return netconf(n.net_name(), n.bridge_name(), host_local(n.data_dir(), V4, V6),
                   isGateway=True, isDefaultGateway=True, **extra)


def test_two_containers_reach_each_other_and_the_gateway_dual_stack(node: Node) -> None:
    conf = dual_stack(node)
    bridge = conf["bridge"]
    c1, c2 = node.add_container(), node.add_container()
    r1 = node.add(conf, "ctr-one", c1)
    r2 = node.add(conf, "ctr-two", c2)

    # Result shape: bridge, host veth, container interface; both IPs on interface 2.
    for result, container in ((r1, c1), (r2, c2)):
        assert result["cniVersion"] == "1.1.0"
        names = [i["name"] for i in result["interfaces"]]
        assert len(names) == 3 and names[0] == bridge and names[2] == "eth0", result
        assert names[1] in node.veths(), (names, node.veths())
        assert result["interfaces"][2]["sandbox"] == container.path
        assert "sandbox" not in result["interfaces"][0] and "sandbox" not in result["interfaces"][1]
        assert all("mac" in i for i in result["interfaces"]), result
        assert [ip["interface"] for ip in result["ips"]] == [2, 2]
        assert all("version" not in ip for ip in result["ips"])
        gws = {ip["gateway"] for ip in result["ips"]}
        assert gws == {"10.201.0.1", "fd00:201::1"}
        routes = {(r["dst"], r.get("gw")) for r in result["routes"]}
        assert routes == {("0.0.0.0/0", "10.201.0.1"), ("::/0", "fd00:201::1")}, result["routes"]
        # The container's MAC in the result is the real one.
        assert result["interfaces"][2]["mac"] == node.existing_link("eth0", container)["address"]

    addrs1 = sorted(ip["address"] for ip in r1["ips"])
    addrs2 = sorted(ip["address"] for ip in r2["ips"])
    assert addrs1 == ["10.201.0.2/24", "fd00:201::2/64"]
    assert addrs2 == ["10.201.0.3/24", "fd00:201::3/64"]

    # Real state: addresses on eth0 in each container, gateway addresses on the bridge,
    # default routes via the gateway, host veths enslaved to the bridge and up.
    assert sorted(node.addrs("eth0", c1)) == addrs1
    assert sorted(node.addrs("eth0", c2)) == addrs2
    assert sorted(node.addrs(bridge)) == ["10.201.0.1/24", "fd00:201::1/64"]
    for container in (c1, c2):
        eth0 = node.link("eth0", container)
        assert eth0 is not None and "UP" in eth0["flags"]
        v4_default = [r for r in node.routes(container, 4) if r["dst"] == "default"]
        v6_default = [r for r in node.routes(container, 6) if r["dst"] == "default"]
        assert [r.get("gateway") for r in v4_default] == ["10.201.0.1"]
        assert [r.get("gateway") for r in v6_default] == ["fd00:201::1"]
    for veth in (r1["interfaces"][1]["name"], r2["interfaces"][1]["name"]):
        link = node.link(veth)
        assert link is not None and link.get("master") == bridge and "UP" in link["flags"]
    br = node.link(bridge)
    assert br is not None and br["linkinfo"]["info_kind"] == "bridge" and "UP" in br["flags"]

    # Real traffic, both families: container to container and container to gateway.
    for src, dst in ((c1, "10.201.0.3"), (c2, "10.201.0.2"), (c1, "fd00:201::3"), (c2, "fd00:201::2"),
                     (c1, "10.201.0.1"), (c2, "10.201.0.1"), (c1, "fd00:201::1"), (c2, "fd00:201::1")):
        assert node.ping(src, dst), f"ping from {src.name} to {dst} failed"
    # And from the node (the gateway) into a container.
    assert node.ping(None, "10.201.0.2")
    assert node.ping(None, "fd00:201::3")


def test_bridge_mac_is_stable_across_attachments(node: Node) -> None:
    conf = dual_stack(node)
    bridge = conf["bridge"]
    containers = [node.add_container() for _ in range(3)]
    r0 = node.add(conf, "mac-0", containers[0])
    mac = node.existing_link(bridge)["address"]
    assert r0["interfaces"][0]["mac"] == mac
    seen = [mac]
    r1 = node.add(conf, "mac-1", containers[1])
    seen.append(node.existing_link(bridge)["address"])
    assert r1["interfaces"][0]["mac"] == mac
    node.ok("DEL", conf, "mac-0", containers[0].path)
    seen.append(node.existing_link(bridge)["address"])
    r2 = node.add(conf, "mac-2", containers[2])
    seen.append(node.existing_link(bridge)["address"])
    assert r2["interfaces"][0]["mac"] == mac
    node.ok("DEL", conf, "mac-1", containers[1].path)
    node.ok("DEL", conf, "mac-2", containers[2].path)
    seen.append(node.existing_link(bridge)["address"])
    assert seen == [mac] * len(seen), seen
    # Not a port's MAC: the kernel's choice (lowest port MAC) would change with the ports.
    assert mac not in {r["interfaces"][1]["mac"] for r in (r0, r1, r2)}


def test_explicit_mtu_applies_to_bridge_and_both_veth_ends(node: Node) -> None:
    conf = dual_stack(node, mtu=1450)
    c1, c2 = node.add_container(), node.add_container()
    r1 = node.add(conf, "mtu-1", c1)
    r2 = node.add(conf, "mtu-2", c2)
    assert node.existing_link(conf["bridge"])["mtu"] == 1450  # set when the bridge was created
    for result, container in ((r1, c1), (r2, c2)):
        assert node.existing_link(result["interfaces"][1]["name"])["mtu"] == 1450
        assert node.existing_link("eth0", container)["mtu"] == 1450
        assert [i.get("mtu") for i in result["interfaces"]] == [1450, 1450, 1450]  # 1.1.0 has mtu
    # Full-size packets for that MTU pass without fragmentation (DF set).
    out = subprocess.run(
        ["ip", "netns", "exec", c1.name, "ping", "-n", "-q", "-c1", "-W1", "-M", "do", "-s", str(1450 - 28),
         "10.201.0.3"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mtu_defaults_to_the_default_route_link(node: Node) -> None:
    # The node's uplink: a link with MTU 1400 carrying the default route (nothing is sent on it).
    node.add_uplink("uplink0", 1400, "203.0.113.2/24", "203.0.113.1")
    conf = dual_stack(node)
    c1 = node.add_container()
    result = node.add(conf, "mtu-default", c1)
    assert node.existing_link(conf["bridge"])["mtu"] == 1400
    assert node.existing_link(result["interfaces"][1]["name"])["mtu"] == 1400
    assert node.existing_link("eth0", c1)["mtu"] == 1400
    assert node.existing_link("uplink0")["mtu"] == 1400  # untouched


def test_mtu_without_default_route_is_1500(node: Node) -> None:
    conf = dual_stack(node)
    c1 = node.add_container()
    result = node.add(conf, "mtu-none", c1)
    assert node.existing_link(conf["bridge"])["mtu"] == 1500
    assert node.existing_link(result["interfaces"][1]["name"])["mtu"] == 1500
    assert node.existing_link("eth0", c1)["mtu"] == 1500
