"""`cni-bridge list`: real attachments in a node namespace, tampered with, and what list reports.

Each backend (iptables-nft, iptables-legacy, nftables) gets two networks sharing one store:
a dual-stack one with masquerade and published ports, an IPv4 one without. Then a veth is
deleted, another detached from its bridge, one rule (nftables: one element) of an attachment
deleted, reservations removed; list and list --json must report exactly that, and leave the
state directory, the store and the rules as they were. Also: no books at all, and a DEL loop
running while list reads.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import threading
from typing import Any

import pytest

from cni_bridge.ipam.store import Store as HostLocalStore
from cni_bridge.network.naming import host_veth_name
from tests.plugin import (BIN, REF_HOST_LOCAL, Node, host_local, netconf, node, requires_plugin,  # noqa: F401
                          requires_reference)
from tests.traffic import ENV_BACKEND, NFTABLES, backend  # noqa: F401

pytestmark = [pytest.mark.integration, requires_plugin]

V4A, V6A, V4B = "10.231.0.0/24", "fd00:231::/64", "10.232.0.0/24"
TCP = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
UDP = {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}
TCP4 = {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "0.0.0.0"}


def run_list(node: Node, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}
    return subprocess.run([*node.launcher(dict(environ)), BIN, "list", *args], env=environ,
                          capture_output=True, text=True, timeout=60, check=False)


def listed(node: Node, data_dir: str, *networks: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = run_list(node, "--json", "--state-dir", node.state_dir, "--data-dir", data_dir, *networks, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["warnings"] == [], doc
    return doc


def by_container(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["containerID"]: a for a in doc["attachments"]}


def tree(*roots: str) -> dict[str, tuple[int, int, bytes]]:
    """Every file and directory under the roots: mode, mtime and content."""
    out = {}
    for root in roots:
        for path, dirs, files in os.walk(root):
            for name in [*dirs, *files]:
                full = os.path.join(path, name)
                st = os.lstat(full)
                content = b""
                if name in files:
                    with open(full, "rb") as f:
                        content = f.read()
                out[full] = (st.st_mode, st.st_mtime_ns, content)
    return out


def settings_for(backend: str) -> tuple[dict[str, Any], dict[str, str]]:  # noqa: F811
    if backend == NFTABLES:
        return {"firewallBackend": NFTABLES}, {}
    return {"firewallBackend": "iptables"}, {ENV_BACKEND: backend}


def published(conf: dict[str, Any], *ports: dict[str, Any]) -> dict[str, Any]:
    return {**conf, "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": list(ports)}}


def firewall_of(node: Node, backend: str) -> str:  # noqa: F811
    if backend == NFTABLES:
        return node.sh("nft", "-s", "list", "ruleset").stdout  # -s: without counters, which traffic moves
    saved = "".join(node.sh(f"{tool}-{backend}-save").stdout for tool in ("iptables", "ip6tables"))
    # Without the "# Generated ... on <time>" lines and the chain counters that traffic moves.
    return "\n".join(re.sub(r"\[\d+:\d+\]$", "", line) for line in saved.splitlines() if not line.startswith("#"))


def delete_masquerade_of(node: Node, backend: str, cid: str, bridge: str, ip: str) -> str:  # noqa: F811
    """Delete the IPv4 masquerade rule (nftables: the masq4 element) of one attachment; return
    what list must name as missing."""
    if backend == NFTABLES:
        node.sh("nft", "delete", "element", "inet", "cni-bridge", "masq4", f'{{ "{bridge}" . {ip} }}')
        return f"element {bridge} . {ip} : jump masq-"
    saved = node.sh(f"iptables-{backend}-save", "-t", "nat").stdout.splitlines()
    line = next(x for x in saved if x.startswith("-A POSTROUTING ") and f"id={cid} " in x)
    node.sh("sh", "-c", f"printf '*nat\\n%s\\nCOMMIT\\n' '{line.replace('-A ', '-D ', 1)}' "
            f"| iptables-{backend}-restore --noflush")
    return f"IPv4 nat: {line}"


@requires_reference
def test_list_reports_attachments_and_exactly_what_was_tampered_with(node: Node, backend: str) -> None:  # noqa: F811
    settings, env = settings_for(backend)
    data = node.data_dir()
    a = netconf(node.net_name(), node.bridge_name(), host_local(data, V4A, V6A), isGateway=True, ipMasq=True,
                **settings)
    b = netconf(node.net_name(), node.bridge_name(), host_local(data, V4B), isGateway=True, **settings)
    node.add(published(a, TCP, UDP), "lst-a1", node.add_container(), extra_env=env)
    node.add(published(a, TCP4), "lst-a2", node.add_container(), extra_env=env)
    node.add(a, "lst-a3", node.add_container(), extra_env=env)
    node.add(b, "lst-b1", node.add_container(), extra_env=env)
    node.add(b, "lst-b2", node.add_container(), extra_env=env)
    # An address the reference host-local reserved in the same store: known from the store only.
    node.ok("ADD", {**b, "cniVersion": "1.0.0"}, "lst-b3", node.add_container().path, executable=REF_HOST_LOCAL)
    driver = "nftables" if backend == NFTABLES else "iptables"

    def expected(cid: str, conf: dict[str, Any], addresses: list[str], ports: list[tuple[str, int, str]],
                 veth: str = "ok", rules: str = "ok", missing: list[str] | None = None) -> dict[str, Any]:
        recorded = cid != "lst-b3"
        return {"network": conf["name"], "containerID": cid, "ifname": "eth0", "addresses": addresses,
                "ports": [{"protocol": p, "hostPort": n, "hostIP": ip} for p, n, ip in ports],
                "bridge": conf["bridge"] if recorded else "",  # the veth's master, else the record's
                "hostVeth": {"name": host_veth_name(conf["name"], cid, "eth0"), "state": veth},
                "rules": {"driver": driver if recorded else "", "state": rules if recorded else "none",
                          "missing": missing or []},
                "intact": veth == "ok" and rules in ("ok", "none")}

    both_wild = [("tcp", 8080, "0.0.0.0"), ("tcp", 8080, "::"), ("udp", 5353, "0.0.0.0"), ("udp", 5353, "::")]
    want = {
        "lst-a1": expected("lst-a1", a, ["10.231.0.2", "fd00:231::2"], both_wild),
        "lst-a2": expected("lst-a2", a, ["10.231.0.3", "fd00:231::3"], [("tcp", 8443, "0.0.0.0")]),
        "lst-a3": expected("lst-a3", a, ["10.231.0.4", "fd00:231::4"], []),
        "lst-b1": expected("lst-b1", b, ["10.232.0.2"], []),
        "lst-b2": expected("lst-b2", b, ["10.232.0.3"], []),
        "lst-b3": expected("lst-b3", b, ["10.232.0.4"], [], veth="missing", rules="none"),
    }
    doc = listed(node, data, env=env)
    assert doc["stateDir"] == node.state_dir and doc["dataDir"] == data
    assert [x["containerID"] for x in doc["attachments"]] == sorted(want, key=lambda c: (want[c]["network"], c))
    assert by_container(doc) == want
    assert by_container(listed(node, data, b["name"], env=env)) == {c: want[c] for c in ("lst-b1", "lst-b2", "lst-b3")}

    # Tamper: a veth deleted, one detached, a rule or element deleted, reservations removed.
    node.sh("ip", "link", "del", host_veth_name(a["name"], "lst-a2", "eth0"))
    node.sh("ip", "link", "set", host_veth_name(b["name"], "lst-b1", "eth0"), "nomaster")
    lost = delete_masquerade_of(node, backend, "lst-a1", a["bridge"], "10.231.0.2")
    os.unlink(os.path.join(data, a["name"], "fd00:231::2"))
    os.unlink(os.path.join(data, b["name"], "10.232.0.3"))
    os.unlink(os.path.join(data, b["name"], "10.232.0.4"))  # lst-b3 was only in the store: gone
    before = (tree(node.state_dir, data), firewall_of(node, backend), node.link_names())

    doc = listed(node, data, env=env)
    got = by_container(doc)
    assert len(got["lst-a1"]["rules"]["missing"]) == 1 and got["lst-a1"]["rules"]["missing"][0].startswith(
        "IPv4 nat: " if backend != NFTABLES else "inet " + lost), got["lst-a1"]
    if backend != NFTABLES:
        assert got["lst-a1"]["rules"]["missing"] == [lost]
    want["lst-a1"] = expected("lst-a1", a, ["10.231.0.2"], both_wild, rules="missing",
                              missing=got["lst-a1"]["rules"]["missing"])
    want["lst-a2"] = expected("lst-a2", a, ["10.231.0.3", "fd00:231::3"], [("tcp", 8443, "0.0.0.0")], veth="missing")
    want["lst-b1"] = expected("lst-b1", b, ["10.232.0.2"], [], veth="detached")
    want["lst-b2"] = expected("lst-b2", b, [], [])
    del want["lst-b3"]
    assert got == want

    text = run_list(node, "--state-dir", node.state_dir, "--data-dir", data, env=env)
    assert text.returncode == 0 and text.stderr == "", text
    lines = text.stdout.splitlines()
    header = lines[0].split()
    assert header == ["NETWORK", "CONTAINER", "IFNAME", "ADDRESSES", "PORTS", "BRIDGE", "VETH", "RULES"]
    starts = [lines[0].index(column) for column in header]
    rows = {line[starts[1]:].split()[0]: line for line in lines[1:]}
    assert sorted(rows) == sorted(want)
    for line in lines[1:]:  # aligned: every cell starts where its header does
        assert all(line[s - 1] == " " and line[s] != " " for s in starts[1:]), lines
    cells = {cid: row[:starts[-1]].split() + [row[starts[-1]:]] for cid, row in rows.items()}
    shown = re.sub(r' -m comment --comment "[^"]*"', "", got["lst-a1"]["rules"]["missing"][0])  # the row says whose
    assert cells["lst-a1"][3:] == ["10.231.0.2", "8080/tcp,5353/udp", a["bridge"], "ok", f"1 missing: {shown}"]
    assert cells["lst-a2"][3:] == ["10.231.0.3,fd00:231::3", "0.0.0.0:8443/tcp", a["bridge"], "missing", "ok"]
    assert cells["lst-a3"][3:] == ["10.231.0.4,fd00:231::4", "-", a["bridge"], "ok", "ok"]
    assert cells["lst-b1"][3:] == ["10.232.0.2", "-", b["bridge"], "detached", "ok"]
    assert cells["lst-b2"][3:] == ["-", "-", b["bridge"], "ok", "ok"]

    # Read-only: nothing of the books, the rules or the links changed.
    assert (tree(node.state_dir, data), firewall_of(node, backend), node.link_names()) == before


def test_list_without_books(node: Node) -> None:
    missing_state, missing_data = os.path.join(node.temp_dir(), "state"), os.path.join(node.temp_dir(), "data")
    for state, data in ((missing_state, missing_data), (node.temp_dir(), node.temp_dir())):
        proc = run_list(node, "--json", f"--state-dir={state}", f"--data-dir={data}")
        assert proc.returncode == 0 and proc.stderr == "", proc
        assert json.loads(proc.stdout) == {"stateDir": state, "dataDir": data, "attachments": [], "warnings": []}
        proc = run_list(node, "--state-dir", state, "--data-dir", data)
        assert proc.returncode == 0 and proc.stdout.startswith("no attachments"), proc
    assert not os.path.exists(missing_state) and not os.path.exists(missing_data)  # nothing created

    # Records of another boot (or namespace) describe tables that are gone: ignored, and said so.
    stale = node.temp_dir()
    os.makedirs(os.path.join(stale, "attachments"))
    for name, text in (("generation", "another-boot 1\n"), ("attachments/0123.json", "{}")):
        with open(os.path.join(stale, name), "w", encoding="utf-8") as f:
            f.write(text)
    proc = run_list(node, "--json", "--state-dir", stale, "--data-dir", missing_data)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["attachments"] == [] and len(doc["warnings"]) == 1, proc
    assert "earlier boot" in doc["warnings"][0]


def test_list_names_the_owners_the_store_names(node: Node) -> None:
    """A reservation is listed as the attachment whose DEL would release it: list reads the store
    with the store's own reader, whitespace inside a file included."""
    data, net = node.data_dir(), node.net_name()
    os.makedirs(os.path.join(data, net))
    contents = {"10.233.0.2": "lst-own \r\neth0", "10.233.0.3": "lst-own\r\n eth0", "10.233.0.4": "lst-own\r\neth0",
                "10.233.0.5": "lst-legacy", "10.233.0.6": ""}
    for name, text in contents.items():
        with open(os.path.join(data, net, name), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    doc = listed(node, data)
    assert {(a["containerID"], a["ifname"]): a["addresses"] for a in doc["attachments"]} == {
        ("lst-own ", "eth0"): ["10.233.0.2"], ("lst-own", " eth0"): ["10.233.0.3"], ("lst-own", "eth0"): ["10.233.0.4"],
        ("lst-legacy", ""): ["10.233.0.5"], ("", ""): ["10.233.0.6"]}
    assert HostLocalStore(data, net).release_by_owner("lst-own", "eth0") == [ipaddress.ip_address("10.233.0.4")]


def test_list_usage(node: Node) -> None:
    proc = run_list(node, "--help")
    assert proc.returncode == 0 and "--json" in proc.stdout and "--state-dir" in proc.stdout, proc
    for bad in (["--bogus"], ["--state-dir"]):
        proc = run_list(node, *bad)
        assert proc.returncode == 2 and proc.stdout == "" and "list --help" in proc.stderr, proc
    assert "list [--json]" in subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout


def test_list_while_attachments_are_deleted(node: Node) -> None:
    """Records, claims, shared markers and reservations vanish while list reads them."""
    data = node.data_dir()
    conf = published(netconf(node.net_name(), node.bridge_name(), host_local(data, V4A, V6A), isGateway=True,
                             ipMasq=True), TCP)
    cids = [f"lst-del-{i}" for i in range(8)]
    containers = {cid: node.add_container() for cid in cids}
    for i, cid in enumerate(cids):
        ports = {**TCP, "hostPort": 9000 + i}
        node.add({**conf, "runtimeConfig": {"portMappings": [ports]}}, cid, containers[cid])
    assert len(listed(node, data)["attachments"]) == len(cids)

    def delete_all() -> None:
        for cid in cids:
            node.ok("DEL", conf, cid, containers[cid].path)

    deleter = threading.Thread(target=delete_all)
    deleter.start()
    seen: list[int] = []
    try:
        while deleter.is_alive() or not seen:
            proc = run_list(node, "--json", "--state-dir", node.state_dir, "--data-dir", data)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc
            doc = json.loads(proc.stdout)
            assert {a["containerID"] for a in doc["attachments"]} <= set(cids)
            seen.append(len(doc["attachments"]))
    finally:
        deleter.join()
    assert listed(node, data)["attachments"] == []
    assert len(seen) >= 2 and seen[0] > 0, seen  # it did read while the DELs ran
