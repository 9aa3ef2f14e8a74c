"""Firewall reloads, by real traffic: ``cni-bridge restore`` brings every running container's
traffic back, and an ADD after a reload gives a fully working container by itself.

On each backend (iptables-nft, iptables-legacy, nftables), a node whose FORWARD policy drops
(both families) runs two dual-stack containers with ipMasq and a published port each. Each
way a reload takes our rules (``iptables -F FORWARD``, ``iptables -t nat -F``, ``nft flush
ruleset``, an ``iptables-restore`` of a file saved without them) is shown to break traffic;
after the executable's ``restore``, masquerade (as seen by the outside host at 203.0.113.2),
the published ports from outside and from 127.0.0.1, and forwarding work again, our rules are
the ones there were, in their order, and a second ``restore`` changes nothing. Then the same
flush again, and a container added after it works fully without a restore. The topology is
tests/traffic.py's.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.reloads import FLUSHES, reload_firewall
from tests.plugin import BIN, Container, node, requires_plugin  # noqa: F401
from tests.traffic import (NODE2_V4, NODE2_V6, NODE_V4, NODE_V6, OUTSIDE2_V4, OUTSIDE2_V6, OUTSIDE_V4,  # noqa: F401
                           OUTSIDE_V6, Lab, Probe, backend, lab, probe_all, run_probes)

pytestmark = [pytest.mark.integration, requires_plugin]

V4, V6 = "10.223.0.0/24", "fd00:223::/64"
GW4 = "10.223.0.1"


def start(lab: Lab) -> tuple[tuple[str, str], dict[str, object]]:
    """The node with FORWARD policy DROP and a second uplink subnet; its iptables as saved
    then (a reload's file without our rules), and the network config."""
    lab.add_second_subnet()
    lab.forward_policy_drop()
    saved = (lab.save(4), lab.save(6))
    lab.serve_echo(lab.outside, tcp=7000)
    return saved, lab.network(V4, V6)


def published_conf(conf: dict[str, object], host_port: int) -> dict[str, object]:
    return dict(conf, runtimeConfig={"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]})


def container(lab: Lab, conf: dict[str, object], cid: str, host_port: int) -> Container:
    c = lab.node.add_container()
    lab.add(published_conf(conf, host_port), cid, c)
    lab.serve_echo(c, tcp=80)
    return c


def working(lab: Lab, c: Container, host_port: int) -> dict[Probe, str | None]:
    """What a fully working container answers: masqueraded out in both families, its port
    published from outside in both families and from the node's 127.0.0.1."""
    return {
        Probe(c.name, "tcp", OUTSIDE2_V4, 7000): NODE2_V4,
        Probe(c.name, "tcp", OUTSIDE2_V6, 7000): NODE2_V6,
        Probe(lab.outside, "tcp", NODE_V4, host_port): OUTSIDE_V4,
        Probe(lab.outside, "tcp", NODE_V6, host_port): OUTSIDE_V6,
        Probe(lab.node.name, "tcp", "127.0.0.1", host_port): GW4,
    }


def flush(lab: Lab, how: str, saved: tuple[str, str]) -> None:
    reload_firewall(lab.node.name, lab.flavour, how, saved)


def ours(lab: Lab) -> list[str]:
    """Our rules, in order, counters aside: iptables lines of ours (also the nftables
    backend's accepts in FORWARD) and our nftables table."""
    return [line for line in lab.ruleset().splitlines() if "CNIBR" in line or "cni-bridge" in line
            or not line.startswith(("*", ":", "-", "COMMIT", "#"))]


def restore(lab: Lab) -> subprocess.CompletedProcess[str]:
    env = [f"{k}={v}" for k, v in lab.env.items()]
    done = lab.sh(lab.node, "env", *env, BIN, "restore", "--state-dir", lab.node.state_dir, check=False)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.parametrize("how", FLUSHES)
def test_restore_brings_traffic_back_and_an_add_after_a_flush_works(lab: Lab, how: str) -> None:
    saved, conf = start(lab)
    wanted = {**working(lab, container(lab, conf, "ctr-r1", 8080), 8080),
              **working(lab, container(lab, conf, "ctr-r2", 8081), 8081)}
    run_probes(lab, wanted)
    before = ours(lab)
    flush(lab, how, saved)
    if ours(lab) != before:  # nft flush ruleset leaves iptables-legacy alone
        answers = probe_all(list(wanted))
        assert any(a.peer != wanted[p] for p, a in zip(wanted, answers)), "the flush broke nothing"
        assert "restored" in restore(lab).stdout
    run_probes(lab, wanted)
    assert ours(lab) == before
    rules = lab.ruleset()
    assert "restored" not in restore(lab).stdout
    assert lab.ruleset() == rules
    # Flushed again, an ADD does not build on the missing shared rules: the new container
    # works fully without a restore; then restore brings the others back too.
    flush(lab, how, saved)
    late = container(lab, conf, "ctr-r3", 8082)
    run_probes(lab, working(lab, late, 8082))
    restore(lab)
    run_probes(lab, {**wanted, **working(lab, late, 8082)})
    lab.ok("DEL", published_conf(conf, 8082), "ctr-r3", late)
    assert ours(lab) == before
