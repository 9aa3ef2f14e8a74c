"""Firewall rules around traffic: port conflicts, leaving no trace (DEL, DEL without the
namespace, GC) and CHECK, on every firewall backend (iptables-nft, iptables-legacy,
nftables), read back with that backend's own listing.

"No trace" is checked against the node's complete iptables-save and ip6tables-save
(comments and packet counters aside), and with the nftables backend `nft list table inet
cni-bridge` too: the node first gets foreign iptables rules in every table the plugin uses
(so the tables exist before the first ADD, as on any real host), and after the last DEL
the output must be exactly what it was (for nftables: no table of ours at all).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests import nstools
from tests.plugin import Container, node, reservations, requires_plugin, with_prev  # noqa: F401
from tests.traffic import (NODE_V4, NODE_V6, OUTSIDE_V4, OUTSIDE_V6, UPLINK, Lab, Probe, backend, describe,  # noqa: F401
                           lab, probe_all)

pytestmark = [pytest.mark.integration, requires_plugin]

V4, V6 = "10.221.0.0/24", "fd00:221::/64"
TCP = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
UDP = {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}

# Someone else's rules, per family: the plugin must leave them as they are.
FOREIGN = [
    ("filter", "-N", "FOREIGN-FWD"),
    ("filter", "-A", "FORWARD", "-i", UPLINK, "-j", "FOREIGN-FWD"),
    ("filter", "-A", "FOREIGN-FWD", "-p", "tcp", "--dport", "22", "-j", "ACCEPT"),
    ("filter", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP"),
    ("nat", "-N", "FOREIGN-NAT"),
    ("nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "9999", "-j", "FOREIGN-NAT"),
    ("nat", "-A", "POSTROUTING", "-o", UPLINK, "-p", "udp", "--dport", "9", "-j", "RETURN"),
    ("nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9998", "-j", "FOREIGN-NAT"),
    ("raw", "-A", "PREROUTING", "-i", UPLINK, "-p", "tcp", "--dport", "9", "-j", "ACCEPT"),
]


def seed_foreign_rules(lab: Lab) -> str:  # noqa: F811
    """Add FOREIGN in both families; return the node's ruleset afterwards."""
    for family in (4, 6):
        for table, *args in FOREIGN:
            lab.iptables(family, "-t", table, *args)
    return lab.ruleset()


def without_runtime(conf: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in conf.items() if k != "runtimeConfig"}


def with_ports(conf: dict[str, Any], ports: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(conf, runtimeConfig={"portMappings": ports})


def gc_conf(conf: dict[str, Any], valid: list[tuple[str, str]]) -> dict[str, Any]:
    return dict(without_runtime(conf), **{"cni.dev/valid-attachments": [{"containerID": c, "ifname": i}
                                                                         for c, i in valid]})


def diff(before: str, after: str) -> str:
    import difflib
    return "\n".join(difflib.unified_diff(before.splitlines(), after.splitlines(), "before", "after", lineterm=""))


# --- 6. port conflicts -------------------------------------------------------------------


def test_port_conflict_names_the_holder_and_leaves_every_rule_as_it_was(lab: Lab) -> None:  # noqa: F811
    conf = lab.network(V4, V6, [TCP])
    holder, second = lab.node.add_container(), lab.node.add_container()
    lab.add(conf, "ctr-holder", holder)
    lab.serve_echo(holder, tcp=80)
    before, links = lab.ruleset(), lab.node.link_names()
    held = reservations(conf["ipam"]["dataDir"], conf["name"])
    # The same port and protocol: on every address, on the holder's IPv4 address, on an IPv6 one.
    for ports in ([TCP], [dict(TCP, hostIP=NODE_V4)], [dict(TCP, hostIP=NODE_V6)],
                  [UDP, dict(TCP, containerPort=81)]):
        r = lab.run("ADD", with_ports(conf, ports), "ctr-second", second)
        assert r.rc == 1 and r.code == 110, f"{ports}: {r}"
        assert "ctr-holder" in r.msg and "8080" in r.msg, f"the error should name the holder and the port: {r}"
        after = lab.ruleset()
        assert after == before, f"{ports}: the failed ADD changed the rules:\n{diff(before, after)}"
        assert lab.node.link_names() == links
        assert lab.node.link_names(second) == {"lo"}
        assert reservations(conf["ipam"]["dataDir"], conf["name"]) == held
    # Another protocol on the same port is no conflict.
    lab.add(with_ports(conf, [dict(TCP, protocol="udp")]), "ctr-second", second)
    lab.serve_echo(second, udp=80)  # the holder serves only TCP, the second container only UDP
    wanted = {Probe(lab.outside, "tcp", NODE_V4, 8080): OUTSIDE_V4,
              Probe(lab.outside, "udp", NODE_V4, 8080): OUTSIDE_V4,
              Probe(lab.outside, "tcp", NODE_V6, 8080): OUTSIDE_V6,
              Probe(lab.outside, "udp", NODE_V6, 8080): OUTSIDE_V6}
    answers = probe_all(list(wanted))
    assert all(a.peer == wanted[a.probe] for a in answers), describe(answers)


# --- 8. no trace ---------------------------------------------------------------------------


def _many_networks(lab: Lab) -> list[tuple[dict[str, Any], str, Container]]:  # noqa: F811
    """Attachments covering every kind of rule: masquerade and ports in both families,
    two on one network (shared per-bridge rules), isolate, internal, hostIP."""
    net_a = lab.network(V4, V6, [TCP, UDP])
    net_b = lab.network("10.222.0.0/24", None, [{"hostPort": 9090, "containerPort": 80, "protocol": "tcp"}],
                        isolate=True)
    net_c = lab.network("10.223.0.0/24", "fd00:223::/64", ipMasq=None, isDefaultGateway=None, internal=True)
    out = [(net_a, "ctr-a1"), (with_ports(net_a, [dict(TCP, hostPort=8081, hostIP=NODE_V4)]), "ctr-a2"),
           (net_b, "ctr-b"), (net_c, "ctr-c")]
    done = []
    for conf, cid in out:
        c = lab.node.add_container()
        lab.add(conf, cid, c)
        done.append((conf, cid, c))
    return done


def significant(ruleset: str) -> list[str]:
    """Rules, user-defined chains and nftables lines: what a node without any table shows as nothing."""
    nftables = ruleset.partition("# nftables\n")[2]
    return [line for line in ruleset.splitlines()
            if line.startswith("-A") or (line.startswith(":") and not re.match(r":[A-Z]+ (ACCEPT|DROP)$", line))
            ] + [line for line in nftables.splitlines() if line.strip()]


def test_a_pristine_node_has_no_rule_and_no_chain_left_after_the_last_del(lab: Lab) -> None:  # noqa: F811
    assert significant(lab.ruleset()) == []
    attachments = _many_networks(lab)
    assert significant(lab.ruleset()) != []
    for conf, cid, c in reversed(attachments):
        lab.ok("DEL", conf, cid, c)
    assert significant(lab.ruleset()) == [], lab.ruleset()


def test_rules_after_the_last_del_are_exactly_those_before_the_first_add(lab: Lab) -> None:  # noqa: F811
    before = seed_foreign_rules(lab)
    attachments = _many_networks(lab)
    during = lab.ruleset()
    assert ("table inet cni-bridge" if lab.nftables else "CNIBR-") in during and during != before
    for i in (0, 2, 3, 1):  # not in ADD order: shared rules go with their last user
        conf, cid, c = attachments[i]
        lab.ok("DEL", conf, cid, c)
    after = lab.ruleset()
    assert after == before, diff(before, after)
    # A repeated DEL changes nothing either.
    for conf, cid, c in attachments:
        lab.ok("DEL", conf, cid, c)
    assert lab.ruleset() == before


def test_rules_are_removed_by_del_after_the_container_namespace_is_gone(lab: Lab) -> None:  # noqa: F811
    before = seed_foreign_rules(lab)
    attachments = _many_networks(lab)
    for _, _, c in attachments:
        nstools.delete_netns(c.name)
    for i, (conf, cid, c) in enumerate(attachments):
        # The runtime may still pass the old path, or nothing at all.
        lab.ok("DEL", conf, cid, netns_path=c.path if i % 2 else "")
    after = lab.ruleset()
    assert after == before, diff(before, after)


def test_gc_removes_the_rules_of_attachments_not_valid(lab: Lab) -> None:  # noqa: F811
    before = seed_foreign_rules(lab)
    attachments = _many_networks(lab)
    net_a, net_b = attachments[0][0], attachments[2][0]

    def lines_of(network: str) -> list[str]:
        # An nft set lists one element a line, its punctuation depending on its neighbours.
        return sorted(line.strip().removeprefix("elements = { ").rstrip(",").removesuffix(" }")
                      for line in lab.ruleset().splitlines() if f"net={network} " in line)

    b_lines = lines_of(net_b["name"])
    a1_lines = [line for line in lines_of(net_a["name"]) if " id=ctr-a1 " in line]
    assert b_lines and a1_lines
    # ctr-a1 still valid: only ctr-a2's rules go.
    lab.ok("GC", gc_conf(net_a, [("ctr-a1", "eth0")]))
    assert lines_of(net_a["name"]) == a1_lines
    # Nothing of net_a valid: all of it goes; the other networks keep theirs.
    lab.ok("GC", gc_conf(net_a, []))
    assert lines_of(net_a["name"]) == []
    assert lines_of(net_b["name"]) == b_lines
    for conf, _, _ in attachments[2:]:
        lab.ok("GC", gc_conf(conf, []))
    after = lab.ruleset()
    assert after == before, diff(before, after)


# --- 9. CHECK ------------------------------------------------------------------------------


def _saved_rule(lab: Lab, family: int, chain_prefix: str, needle: str) -> tuple[str, str]:  # noqa: F811
    """(chain, spec) of the nat rule in a chain starting with chain_prefix whose text has needle."""
    for line in lab.save(family).splitlines():
        if line.startswith(f"-A {chain_prefix}") and needle in line:
            chain, _, spec = line[3:].partition(" ")
            return chain, spec
    raise AssertionError(f"no rule {chain_prefix}* with {needle!r} in:\n{lab.save(family)}")


def _tamper_iptables(lab: Lab) -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
    """(what the error must name, delete it, put it back) for iptables rules of the container."""
    cases = [
        (4, "CNIBR-MASQ-", "-j MASQUERADE"),             # the masquerade itself
        (6, "POSTROUTING", "-s fd00:221::2/128"),         # the jump to the masquerade chain
        (4, "CNIBR-DNAT-", "--dport 8080 -j DNAT"),       # a published TCP port
        (6, "CNIBR-DNAT-", "--dport 5353 -j DNAT"),       # a published UDP port
        (4, "PREROUTING", "shared=hostport"),             # the shared jump all published ports need
    ]
    def rule(family: int, chain: str, spec: str) -> tuple[str, Callable[[], None], Callable[[], None]]:
        def delete() -> None:
            lab.iptables(family, "-t", "nat", "-D", chain, *shlex.split(spec))

        def restore() -> None:
            lab.iptables(family, "-t", "nat", "-A", chain, *shlex.split(spec))
        return chain, delete, restore

    return [rule(family, *_saved_rule(lab, family, chain_prefix, needle)) for family, chain_prefix, needle in cases]


def _tamper_nftables(lab: Lab, bridge: str) -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
    """The same for the nftables backend: elements of the container (put back as nft lists
    them), and a shared chain's rule."""
    def nft(*args: str) -> None:
        lab.sh(lab.node, "nft", *args)

    def element(set_name: str, key: str) -> tuple[str, Callable[[], None], Callable[[], None]]:
        listed = json.loads(lab.sh(lab.node, "nft", "-j", "list", "map", "inet", "cni-bridge", set_name).stdout)
        body = listed["nftables"][1]["map"]
        parts = [part.strip('"') for part in key.split(" . ")]
        mine = next(e for e in body["elem"] if [str(v) for v in e[0]["elem"]["val"]["concat"]] == parts)
        restore = {"nftables": [{"add": {"element": {"family": "inet", "table": "cni-bridge", "name": set_name,
                                                     "elem": [mine]}}}]}
        def put_back() -> None:
            subprocess.run(["ip", "netns", "exec", lab.node.name, "nft", "-j", "-f", "-"], input=json.dumps(restore),
                           text=True, capture_output=True, check=True)
        return set_name, lambda: nft("delete", "element", "inet", "cni-bridge", set_name, f"{{ {key} }}"), put_back

    rule = 'add rule inet cni-bridge nat-prerouting fib daddr type local goto hostports comment "cni-bridge shared=hostport"'
    return [
        element("masq4", f'"{bridge}" . 10.221.0.2'),         # the masquerade itself
        element("hairpin6", f'"{bridge}" . fd00:221::2'),     # IPv6 hairpin
        element("dnat4any_addr", "tcp . 8080"),               # a published TCP port
        element("dnat6any_port", "udp . 5353"),               # a published UDP port
        ("nat-prerouting", lambda: nft("flush", "chain", "inet", "cni-bridge", "nat-prerouting"),  # the shared chain
         lambda: nft(rule)),
    ]


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_check_passes_after_add_and_fails_when_a_nat_rule_is_deleted(lab: Lab, version: str) -> None:  # noqa: F811
    conf = lab.network(V4, V6, [TCP, UDP], version=version)
    c = lab.node.add_container()
    result = lab.add(conf, "ctr-check", c)
    check = with_prev(conf, result)
    lab.ok("CHECK", check, "ctr-check", c)
    cases = _tamper_nftables(lab, conf["bridge"]) if lab.nftables else _tamper_iptables(lab)
    for named, delete, restore in cases:
        delete()
        r = lab.run("CHECK", check, "ctr-check", c)
        assert r.rc == 1 and r.code == 108, f"CHECK passed without {named}: {r}\n{lab.ruleset()}"
        assert named in r.msg, f"the error should name the missing rule: {r}"
        restore()
        lab.ok("CHECK", check, "ctr-check", c)
