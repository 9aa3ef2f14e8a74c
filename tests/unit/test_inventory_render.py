"""The table and JSON of `cni-bridge list` (cni_bridge/inventory/render.py)."""

from __future__ import annotations

import json

from cni_bridge.firewall.portmap import Claim
from cni_bridge.inventory.collect import Entry
from cni_bridge.inventory.render import document, port_text, table


def entry(cid: str, **changes: object) -> Entry:
    fields: dict[str, object] = dict(
        network="net1", container_id=cid, ifname="eth0", addresses=("10.1.0.2", "fd00::2"), ports=(),
        bridge="cni0", host_veth="veth0123456789a", veth="ok", driver="iptables", rules="ok", missing=())
    fields.update(changes)
    return Entry(**fields)  # type: ignore[arg-type]


def test_ports_on_every_address_of_both_families_are_written_once() -> None:
    claims = (Claim("tcp", 8080, "0.0.0.0"), Claim("tcp", 8080, "::"), Claim("udp", 53, "0.0.0.0"),
              Claim("tcp", 443, "203.0.113.1"), Claim("tcp", 443, "2001:db8::1"))
    assert port_text(claims) == "8080/tcp,0.0.0.0:53/udp,203.0.113.1:443/tcp,[2001:db8::1]:443/tcp"
    assert port_text(()) == "-"


def test_table_columns_are_aligned_and_the_rules_column_says_what_is_missing() -> None:
    lost = 'IPv4 nat: -A POSTROUTING -s 10.1.0.2/32 -m comment --comment "cni-bridge net=n id=c if=eth0" -j MASQ'
    rows = [entry("a" * 64, missing=(lost, "IPv6 nat: y"), rules="missing"),
            entry("b", network="a-longer-network", addresses=(), ifname="", veth="unknown", driver="",
                  rules="none")]
    lines = table(rows).splitlines()
    assert lines[0].split() == ["NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "PORTS", "BRIDGE", "VETH", "RULES"]
    assert lines[1].split()[:8] == ["net1", "a" * 12, "eth0", "10.1.0.2,fd00::2", "-", "cni0", "ok", "2"]
    assert lines[1].endswith("2 missing: IPv4 nat: -A POSTROUTING -s 10.1.0.2/32 -j MASQ")
    assert lines[2].split() == ["a-longer-network", "b", "?", "-", "-", "cni0", "unknown", "-"]
    for column in ("CONTAINER", "IFNAME", "ADDRESSES", "PORTS", "BRIDGE", "VETH", "RULES"):
        start = lines[0].index(column)
        assert all(line[start - 1] == " " and line[start] != " " for line in lines), column
    assert ("a" * 64) in table(rows, full_ids=True)


def test_json_document_shape() -> None:
    doc = document([entry("c1", ports=(Claim("tcp", 80, "0.0.0.0"),), veth="missing")], "/s", "/d", ["w"])
    assert json.loads(json.dumps(doc)) == {
        "stateDir": "/s", "dataDir": "/d", "warnings": ["w"],
        "attachments": [{
            "network": "net1", "containerID": "c1", "ifname": "eth0", "addresses": ["10.1.0.2", "fd00::2"],
            "ports": [{"protocol": "tcp", "hostPort": 80, "hostIP": "0.0.0.0"}], "bridge": "cni0",
            "hostVeth": {"name": "veth0123456789a", "state": "missing"},
            "rules": {"driver": "iptables", "state": "ok", "missing": []}, "intact": False}]}
