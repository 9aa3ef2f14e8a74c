"""Plugin-level store compatibility: the executable and the reference host-local binary
share one dataDir and network name, and each skips and releases the other's reservations.

The reference (Debian's /usr/lib/cni/host-local, which speaks up to 1.0.0) runs as a
process in the same node namespace with the same config on stdin.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.plugin import (  # noqa: F401
    REF_HOST_LOCAL,
    Container,
    Node,
    host_local,
    netconf,
    node,
    requires_plugin,
    requires_reference,
    reservations,
)

pytestmark = [pytest.mark.integration, requires_plugin, requires_reference]

RANGE = [{"subnet": "10.207.0.0/24", "rangeStart": "10.207.0.2", "rangeEnd": "10.207.0.20"}]


def ref(node: Node, command: str, conf: dict[str, Any], cid: str, c: Container | None) -> Any:
    r = node.run(command, conf, cid, c.path if c else "", "eth0", executable=REF_HOST_LOCAL)
    assert r.rc == 0, f"reference host-local {command} failed: {r}"
    return r.out


def drop_hint(data_dir: str, net: str) -> None:
    """Remove last_reserved_ip.0 so the next allocation starts at rangeStart again."""
    os.unlink(os.path.join(data_dir, net, "last_reserved_ip.0"))


def test_reference_and_plugin_share_the_store(node: Node) -> None:
    data_dir = node.data_dir()
    conf = netconf(node.net_name(), node.bridge_name(), host_local(data_dir, RANGE), "1.0.0", isGateway=True)
    net = conf["name"]
    ref1, ref2 = node.add_container(), node.add_container()
    ours1, ours2 = node.add_container(), node.add_container()

    # 1. The reference reserves .2; ours continues round-robin after it.
    out = ref(node, "ADD", conf, "ref-1", ref1)
    assert [ip["address"] for ip in out["ips"]] == ["10.207.0.2/24"]
    result = node.add(conf, "ours-1", ours1)
    assert [ip["address"] for ip in result["ips"]] == ["10.207.0.3/24"]
    assert node.addrs("eth0", ours1) == ["10.207.0.3/24"]

    # 2. The reference, starting over at rangeStart, skips ours (.3) and its own (.2).
    drop_hint(data_dir, net)
    out = ref(node, "ADD", conf, "ref-2", ref2)
    assert [ip["address"] for ip in out["ips"]] == ["10.207.0.4/24"]

    # 3. Ours, starting over at rangeStart, skips the reference's .2 and .4.
    drop_hint(data_dir, net)
    result = node.add(conf, "ours-2", ours2)
    assert [ip["address"] for ip in result["ips"]] == ["10.207.0.5/24"]

    assert reservations(data_dir, net) == {
        "10.207.0.2": "ref-1\r\neth0",
        "10.207.0.3": "ours-1\r\neth0",
        "10.207.0.4": "ref-2\r\neth0",
        "10.207.0.5": "ours-2\r\neth0",
    }

    # 4. The reference's DEL releases our reservation (it only touches the store).
    ref(node, "DEL", conf, "ours-1", ours1)
    assert "10.207.0.3" not in reservations(data_dir, net)
    # ...and the reference's CHECK no longer finds it, while ours-2 is still found.
    r = node.run("CHECK", dict(conf, prevResult=result), "ours-1", ours1.path, executable=REF_HOST_LOCAL)
    assert r.rc != 0, r
    ref(node, "CHECK", dict(conf, prevResult=result), "ours-2", ours2)

    # 5. Our DEL releases the reference's reservation (no link of ours exists for it).
    node.ok("DEL", conf, "ref-1", ref1.path)
    assert set(reservations(data_dir, net)) == {"10.207.0.4", "10.207.0.5"}
    assert node.link_names(ref1) == {"lo"}

    # 6. Our DEL of ours-1 still removes its link (the reservation is already gone).
    assert node.link("eth0", ours1) is not None
    node.ok("DEL", conf, "ours-1", ours1.path)
    assert node.link_names(ours1) == {"lo"}

    # 7. The rest, crosswise, and the store is empty.
    node.ok("DEL", conf, "ref-2", ref2.path)
    ref(node, "DEL", conf, "ours-2", ours2)
    assert reservations(data_dir, net) == {}
    node.ok("DEL", conf, "ours-2", ours2.path)
    assert node.link_names() == {"lo", conf["bridge"]}


def test_requested_ip_held_by_the_reference_is_refused(node: Node) -> None:
    """A requested address reserved by the reference for another container is refused by ours."""
    data_dir = node.data_dir()
    conf = netconf(node.net_name(), node.bridge_name(), host_local(data_dir, RANGE), "1.0.0")
    c_ref, c_ours = node.add_container(), node.add_container()
    ref(node, "ADD", conf, "ref-a", c_ref)  # .2
    r = node.run("ADD", conf, "ours-a", c_ours.path, cni_args="IP=10.207.0.2")
    assert r.code == 105, r
    assert node.link_names(c_ours) == {"lo"}
    assert reservations(data_dir, conf["name"]) == {"10.207.0.2": "ref-a\r\neth0"}
