"""CNI_NETNS naming the plugin's own namespace: ADD and CHECK refuse it, DEL leaves its links alone.

Without the check an ADD moved the node's own CNI_IFNAME... into the node: the veth's container
end was created in the namespace the plugin runs in. Each test runs in a throwaway node
namespace whose "eth0" is a veth, the kind of link DEL deletes in a container.
"""

from __future__ import annotations

import pytest

from tests.plugin import Node, host_local, netconf, node, requires_plugin, store_files  # noqa: F401

pytestmark = [pytest.mark.integration, requires_plugin]

OWN = ("/proc/self/ns/net", "/proc/thread-self/ns/net")


def _node_with_eth0(node: Node) -> dict[str, object]:
    node.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "cbtpeer0")
    return netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), "10.211.0.0/24"), ipMasq=True)


@pytest.mark.parametrize("path", OWN)
def test_add_into_the_plugins_own_namespace_is_refused(node: Node, path: str) -> None:
    conf = _node_with_eth0(node)
    links_before = node.link_names()
    r = node.run("ADD", conf, "own-ns", path, "eth1")
    assert r.rc == 1 and r.code == 100 and "own network namespace" in r.msg, r
    assert node.link_names() == links_before
    assert store_files(str(conf["ipam"]["dataDir"]), str(conf["name"])) == []  # type: ignore[index]


def test_check_in_the_plugins_own_namespace_is_refused(node: Node) -> None:
    conf = _node_with_eth0(node)
    prev = {"cniVersion": "1.1.0", "interfaces": [{"name": "eth0", "sandbox": OWN[0]}],
            "ips": [{"address": "10.211.0.2/24", "interface": 0}]}
    r = node.run("CHECK", {**conf, "prevResult": prev}, "own-ns", OWN[0], "eth0")
    assert r.rc == 1 and r.code == 100, r


def test_del_with_the_plugins_own_namespace_keeps_its_links(node: Node) -> None:
    conf = _node_with_eth0(node)
    node.ok("DEL", conf, "own-ns", OWN[0], "eth0")
    assert {"eth0", "cbtpeer0"} <= node.link_names()
