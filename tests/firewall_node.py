"""A throwaway namespace playing the host for driver-level firewall tests, on one backend.

Backends: ``nft`` and ``legacy`` (the iptables driver, with ``CNI_BRIDGE_IPTABLES`` of that
flavour) and ``nftables`` (the nftables driver). Firewall state is per network namespace:
every call of the firewall runs in a child process started with ``ip netns exec <ns>``
(tests/integration/firewall_driver.py), and every iptables or nft command of the tests does
too. The root namespace's tables are never read or written.

Each node first gets someone else's rules (the reference plugins' iptables chains in every
table and family; with nftables also a native table of its own), and ``snapshot()`` is
everything the node's firewall holds: tests compare it with the one taken before, so those
rules must come through untouched and ours must be gone without a trace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import nstools

REPO = Path(__file__).resolve().parents[1]
IPTABLES = ("nft", "legacy")
NFTABLES = "nftables"
BACKENDS = (*IPTABLES, NFTABLES)

# Reference-plugin rules the firewall must leave alone, per family (table, iptables args).
REFERENCE_RULES = [
    ("nat", ["-N", "CNI-HOSTPORT-DNAT"]),
    ("nat", ["-A", "CNI-HOSTPORT-DNAT", "-p", "tcp", "-m", "tcp", "--dport", "9999", "-j", "RETURN"]),
    ("nat", ["-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "CNI-HOSTPORT-DNAT"]),
    ("nat", ["-A", "POSTROUTING", "-m", "comment", "--comment", "CNI portfwd requiring masquerade", "-j", "ACCEPT"]),
    ("filter", ["-N", "CNI-FORWARD"]),
    ("filter", ["-A", "FORWARD", "-j", "CNI-FORWARD"]),
    ("raw", ["-A", "PREROUTING", "-i", "lo", "-j", "ACCEPT"]),
]

# Someone's own nftables table, with a forward chain and a set like ours.
FOREIGN_TABLE = """
table inet foreign {
    set bridges { type ifname; elements = { "cnibr0" }; }
    chain forward { type filter hook forward priority filter; policy accept; iifname @bridges counter; }
}
"""


def missing_tools(backend: str) -> str | None:
    """Why `backend` cannot run here, or None."""
    flavour = "nft" if backend == NFTABLES else backend
    if not all(shutil.which(f"{base}-{flavour}-{kind}") for base in ("iptables", "ip6tables")
               for kind in ("save", "restore")):
        return f"needs iptables-{flavour} (Debian package iptables)"
    if backend == NFTABLES and not shutil.which("nft"):
        return "needs nft (Debian package nftables)"
    return None


class Node:
    """A throwaway namespace playing the host, with one firewall backend and a state dir."""

    def __init__(self, ns: str, backend: str, state_dir: Path) -> None:
        self.ns = ns
        self.backend = backend
        self.nftables = backend == NFTABLES
        self.flavour = "nft" if self.nftables else backend  # of the tests' own iptables commands
        self.state_dir = str(state_dir)

    @property
    def driver(self) -> str:
        return NFTABLES if self.nftables else "iptables"

    def _argv(self, request: dict[str, Any]) -> list[str]:
        request.setdefault("driver", self.driver)
        return ["ip", "netns", "exec", self.ns, sys.executable, "-m", "tests.integration.firewall_driver",
                json.dumps(request)]

    def _env(self) -> dict[str, str]:
        return dict(os.environ, CNI_BRIDGE_IPTABLES=self.flavour, PYTHONPATH=str(REPO))

    def call(self, op: str, **request: Any) -> dict[str, Any]:
        request.update(op=op, state_dir=self.state_dir)
        done = subprocess.run(self._argv(request), capture_output=True, text=True, cwd=REPO, env=self._env(),
                              check=False)
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    def call_parallel(self, op: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Start one firewall call per request at once, as a runtime starting pods does."""
        procs = [subprocess.Popen(self._argv(dict(r, op=op, state_dir=self.state_dir)), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO, env=self._env()) for r in requests]
        answers = []
        for proc in procs:
            out, err = proc.communicate()
            assert proc.returncode == 0, err
            answers.append(json.loads(out))
        return answers

    def ok(self, op: str, **request: Any) -> Any:
        answer = self.call(op, **request)
        assert "error" not in answer, answer
        return answer["ok"]

    def error(self, op: str, **request: Any) -> dict[str, Any]:
        answer = self.call(op, **request)
        assert "error" in answer, answer
        error: dict[str, Any] = answer["error"]
        return error

    # --- the node's firewall --------------------------------------------------------

    def iptables(self, family: int, *args: str, check: bool = True, flavour: str = "") -> str:
        base = "iptables" if family == 4 else "ip6tables"
        return nstools.run_in_netns(self.ns, f"{base}-{flavour or self.flavour}", "-w", *args, check=check).stdout

    def save(self, family: int = 4, flavour: str = "") -> str:
        base = "iptables" if family == 4 else "ip6tables"
        out = nstools.run_in_netns(self.ns, f"{base}-{flavour or self.flavour}-save").stdout
        return "".join(line + "\n" for line in out.splitlines() if not line.startswith("#"))

    def saves(self) -> tuple[str, str]:
        return self.save(4), self.save(6)

    def nft(self, *args: str, check: bool = True) -> str:
        return nstools.run_in_netns(self.ns, "nft", *args, check=check).stdout

    def table(self) -> str:
        """Our table as ``nft -s list table inet cni-bridge`` prints it, "" if there is none."""
        done = nstools.run_in_netns(self.ns, "nft", "-s", "list", "table", "inet", "cni-bridge", check=False)
        return done.stdout if done.returncode == 0 else ""

    def snapshot(self) -> tuple[str, ...]:
        """Everything the node's firewall holds, counters aside: both iptables flavours of
        the node's backend, and with nftables the whole nft ruleset (iptables-nft's tables,
        the foreign table and ours)."""
        if not self.nftables:
            return self.saves()
        return (self.nft("-s", "list", "ruleset"), self.save(4, "legacy"), self.save(6, "legacy"))

    def ours(self) -> str:
        """What of the plugin the node's firewall shows: chains and rules of the iptables
        backend, our table for nftables."""
        if self.nftables:
            return self.table()
        return "".join(line + "\n" for line in "".join(self.saves()).splitlines() if "CNIBR" in line or "cni-bridge" in line)

    def flush_ours(self) -> None:
        """What a firewall reload does to our rules: every table flushed (iptables), our table
        deleted (nftables)."""
        if self.nftables:
            self.nft("delete", "table", "inet", "cni-bridge")
            return
        for family in (4, 6):
            for table in ("nat", "filter", "raw"):
                self.iptables(family, "-t", table, "-F")
                self.iptables(family, "-t", table, "-X")

    def restore(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """``cni-bridge restore`` of the node's state directory, run in the node."""
        return subprocess.run(["ip", "netns", "exec", self.ns, sys.executable, "-m", "cni_bridge", "restore",
                               "--state-dir", self.state_dir, *extra],
                              capture_output=True, text=True, cwd=REPO, env=self._env(), check=False)

    def records(self) -> list[str]:
        root = Path(self.state_dir)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                      if p.is_file() and p.name not in ("lock", "generation"))

    def seed_foreign_rules(self) -> None:
        for family in (4, 6):
            for table, args in REFERENCE_RULES:
                self.iptables(family, "-t", table, *args)
        if self.nftables:
            self.nft_file(FOREIGN_TABLE)

    def nft_file(self, text: str) -> None:
        """Run nft commands (its own syntax) from text, in the node."""
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input=text, text=True, check=True,
                       capture_output=True)


NodeFactory = Callable[[str], Node]


@pytest.fixture
def node_of(tmp_path: Path) -> Iterator[NodeFactory]:
    """node_of(backend): a node of that backend in the test's namespace (seeded with foreign
    rules when first asked for), removed when the test ends. Nodes of two backends share the
    namespace and the state directory, as two networks configured differently on one host."""
    with nstools.throwaway_netns(prefix="cbfw") as (ns,):
        made: list[Node] = []

        def make(backend: str) -> Node:
            reason = missing_tools(backend)
            if reason:
                pytest.skip(reason)
            n = Node(ns, backend, tmp_path / "state")
            if not made:
                n.seed_foreign_rules()
            made.append(n)
            return n
        yield make


def attachment(cid: str, ip4: str = "10.1.0.2", ip6: str | None = "fd00::2", network: str = "n1",
               **extra: Any) -> dict[str, Any]:
    ips: list[list[Any]] = [[ip4, 24]]
    if ip6:
        ips.append([ip6, 64])
    doc: dict[str, Any] = {"network": network, "container_id": cid, "ifname": "eth0", "ips": ips}
    doc.update(extra)
    return doc


PORTS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
         {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]
