"""Timing of ``cni-bridge restore`` and of the firewall part of an ADD, on every backend.

Run as root, from the repository:

    python -m tests.restore_bench restore [--bin dist/cni-bridge] [--sizes 1,100,1000] [--runs 5] [--backends nft,...]
    python -m tests.restore_bench add --tree DIR [--tree DIR ...] [--crowd 10] [--runs 60] [--backends nft,...]

``restore``: in a throwaway namespace per backend (iptables-nft, iptables-legacy, nftables),
N dual-stack attachments with ipMasq and a published port each on one bridge, a FORWARD
policy of DROP; then ``restore`` is timed after ``nft flush ruleset`` (and for legacy, every
iptables-legacy table flushed): everything missing; and again with nothing missing.

``add``: the firewall install and removal of one more attachment beside --crowd residents
(the flavour's FORWARD policy DROP unless --forward-policy ACCEPT),
in process (orchestrate.install, then remove), with the cni_bridge of each --tree (e.g. main
and a branch), runs interleaved: what the ADD's check of the shared rules costs.

Prints min/median/max in ms. Not a test: timing assertions would only make the suite flaky.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests import nstools

BACKENDS = ("nft", "legacy", "nftables")
REPO = Path(__file__).resolve().parents[1]


def doc(i: int) -> dict[str, object]:
    return {"network": "bench", "bridge": "cnibench0", "container_id": f"c{i}", "ifname": "eth0",
            "ips": [[f"10.77.{i // 250}.{i % 250 + 2}", 16], [f"fd00:77::{i + 2:x}", 64]], "ip_masq": True,
            "portMappings": [{"hostPort": 10000 + i, "containerPort": 80}]}


def _env(backend: str, tree: Path = REPO) -> dict[str, str]:
    return dict(os.environ, CNI_BRIDGE_IPTABLES="nft" if backend == "nftables" else backend, PYTHONPATH=str(tree))


_INSTALL = """
import json, sys
from cni_bridge.firewall import driver_named, orchestrate
from tests.integration.firewall_driver import rules_from
driver = driver_named(sys.argv[1])
for doc in json.loads(sys.stdin.read()):
    orchestrate.install(driver, rules_from(doc), sys.argv[2])
"""


def install(ns: str, backend: str, state: str, docs: list[dict[str, object]], tree: Path = REPO) -> None:
    driver = "nftables" if backend == "nftables" else "iptables"
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _INSTALL, driver, state],
                   input=json.dumps(docs), text=True, check=True, env=_env(backend, tree), cwd=tree)


def flush_everything(ns: str, backend: str, policy: str = "DROP") -> None:
    """Every table of the backend's flavour gone (nft flush ruleset; iptables-legacy flushed
    for legacy: legacy tables are touched only there, as on a host that uses one flavour), and
    that flavour's FORWARD policy `policy` in both families."""
    flavour = "legacy" if backend == "legacy" else "nft"
    nstools.run_in_netns(ns, "nft", "flush", "ruleset")
    for base in ("iptables", "ip6tables"):
        if flavour == "legacy":
            for table in ("filter", "nat", "raw"):
                nstools.run_in_netns(ns, f"{base}-legacy", "-w", "-t", table, "-F", check=False)
                nstools.run_in_netns(ns, f"{base}-legacy", "-w", "-t", table, "-X", check=False)
        nstools.run_in_netns(ns, f"{base}-{flavour}", "-w", "-P", "FORWARD", policy)


def timed_restore(ns: str, backend: str, state: str, executable: str) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(["ip", "netns", "exec", ns, executable, "restore", "--state-dir", state],
                          capture_output=True, text=True, env=_env(backend), check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if done.returncode != 0:
        raise SystemExit(f"restore failed: {done.stderr}")
    return elapsed, done.stdout


def spread(values: list[float]) -> str:
    return f"{min(values):8.1f} {statistics.median(values):8.1f} {max(values):8.1f}"


def bench_restore(executable: str, backends: list[str], sizes: list[int], runs: int) -> None:
    print(f"{'backend':9} {'attachments':>11} {'case':14} {'min':>8} {'median':>8} {'max':>8}  (ms, {runs} runs)")
    for backend in backends:
        for size in sizes:
            with nstools.throwaway_netns(prefix="cbrb") as (ns,), tempfile.TemporaryDirectory() as tmp:
                state = str(Path(tmp, "state"))
                flush_everything(ns, backend)
                install(ns, backend, state, [doc(i) for i in range(size)])
                flushed, intact = [], []
                for _ in range(runs):
                    flush_everything(ns, backend)
                    elapsed, out = timed_restore(ns, backend, state, executable)
                    assert "restored" in out, out
                    flushed.append(elapsed)
                    elapsed, out = timed_restore(ns, backend, state, executable)
                    assert "restored" not in out, out
                    intact.append(elapsed)
                print(f"{backend:9} {size:11} {'after a flush':14} {spread(flushed)}")
                print(f"{backend:9} {size:11} {'nothing missing':14} {spread(intact)}")


_CYCLE = """
import json, sys, time
from cni_bridge.firewall import driver_named, orchestrate
from cni_bridge.firewall.driver import Identity
from tests.integration.firewall_driver import rules_from
driver = driver_named(sys.argv[1])
rules = rules_from(json.loads(sys.argv[3]))
start = time.perf_counter()
orchestrate.install(driver, rules, sys.argv[2])
middle = time.perf_counter()
orchestrate.remove(Identity(rules.network, rules.container_id, rules.ifname), sys.argv[2])
print((middle - start) * 1000)
"""


def bench_add(trees: list[Path], backends: list[str], crowd: int, runs: int, policy: str) -> None:
    print(f"{'backend':9} {'tree':28} {'install min':>11} {'median':>8} {'max':>8}  (ms, {runs} runs, {crowd} residents)")
    for backend in backends:
        driver = "nftables" if backend == "nftables" else "iptables"
        with nstools.throwaway_netns(prefix="cbrb") as (ns,), tempfile.TemporaryDirectory() as tmp:
            state = str(Path(tmp, "state"))
            flush_everything(ns, backend, policy)
            install(ns, backend, state, [doc(i) for i in range(crowd)])
            times: dict[Path, list[float]] = {tree: [] for tree in trees}
            for _ in range(runs):
                for tree in trees:
                    done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _CYCLE, driver, state,
                                           json.dumps(doc(crowd))], capture_output=True, text=True,
                                          env=_env(backend, tree), cwd=tree, check=True)
                    times[tree].append(float(done.stdout))
            base = statistics.median(times[trees[0]])
            for tree in trees:
                ratio = statistics.median(times[tree]) / base
                print(f"{backend:9} {str(tree)[-28:]:28} {spread(times[tree])}  x{ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("restore")
    r.add_argument("--bin", default=str(REPO / "dist" / "cni-bridge"))
    r.add_argument("--sizes", default="1,100,1000")
    r.add_argument("--runs", type=int, default=5)
    a = sub.add_parser("add")
    a.add_argument("--tree", action="append", type=Path, required=True)
    a.add_argument("--crowd", type=int, default=10)
    a.add_argument("--runs", type=int, default=60)
    a.add_argument("--forward-policy", default="DROP", choices=("DROP", "ACCEPT"),
                   help="of iptables FORWARD (DROP: the nftables backend keeps accepts there)")
    for p in (r, a):
        p.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()
    backends = args.backends.split(",")
    if args.what == "restore":
        bench_restore(os.path.abspath(args.bin), backends, [int(s) for s in args.sizes.split(",")], args.runs)
    else:
        bench_add([t.resolve() for t in args.tree], backends, args.crowd, args.runs, args.forward_policy)


if __name__ == "__main__":
    main()
