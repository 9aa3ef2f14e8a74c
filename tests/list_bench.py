"""`cni-bridge list` and `list --json` with 1, 100 and 1000 real attachments.

    .venv/bin/python tests/list_bench.py [--runs N] [--sizes 1,100,1000] [--backend iptables|nftables]
                                         [--dual-stack] [--profile]

One throwaway node namespace; attachments made by real ADDs (a /22, and a /64 with --dual-stack;
each with a published port, masquerade; ten attachments per container namespace, one interface each). At each size, `list`
and `list --json` run interleaved, entered with nsenter --net (no mount namespace to set up),
timed from spawn to exit; `--version` alongside is the start-up floor. The node's namespaces and
temp dirs are removed at the end, also on Ctrl-C. Not a test: timing assertions would be flaky.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import nstools  # noqa: E402
from tests.plugin import BIN, Container, Node, host_local, netconf  # noqa: E402

SUBNET = "10.250.0.0/22"
SUBNET6 = "fd00:250::/64"
PER_CONTAINER = 10


def grow(node: Node, conf: dict[str, Any], containers: list[Container], have: int, want: int) -> None:
    def add(i: int) -> None:
        if i // PER_CONTAINER >= len(containers):
            raise RuntimeError("container namespaces are made before the ADDs")
        port = {"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}
        node.add({**conf, "runtimeConfig": {"portMappings": [port]}}, f"bench-{i:04d}",
                 containers[i // PER_CONTAINER], ifname=f"eth{i % PER_CONTAINER}")

    while len(containers) * PER_CONTAINER < want:
        containers.append(node.add_container())
    pool = ThreadPoolExecutor(max_workers=3)
    try:
        list(pool.map(add, range(have, want)))
    finally:
        pool.shutdown(cancel_futures=True)  # Ctrl-C: no more ADDs, then the node goes


def timed(node: Node, *args: str) -> tuple[float, str]:
    argv = ["nsenter", f"--net={nstools.netns_path(name=node.name)}", BIN, *args]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{args}: {proc.stderr}")
    return elapsed, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--sizes", default="1,100,1000")
    parser.add_argument("--backend", default="iptables", choices=("iptables", "nftables"))
    parser.add_argument("--dual-stack", action="store_true", help=f"addresses from {SUBNET6} too")
    parser.add_argument("--profile", action="store_true", help="then profile one list from source at the last size")
    options = parser.parse_args()
    node = Node()
    try:
        data = node.data_dir()
        conf = netconf(node.net_name(), node.bridge_name(), host_local(data, SUBNET, *([SUBNET6] if options.dual_stack else [])), isGateway=True,
                       ipMasq=True, mtu=1400, firewallBackend=options.backend, stateDir=node.state_dir)
        conf["capabilities"] = {"portMappings": True}
        books = ["--state-dir", node.state_dir, "--data-dir", data]
        containers: list[Container] = []
        have = 0
        print(f"cni-bridge list, {options.backend} backend, {'dual-stack' if options.dual_stack else 'IPv4'}, "
              f"ms from spawn to exit, {options.runs} runs each")
        print(f"{'attachments':>11}  {'command':<14} {'min':>7} {'median':>7} {'max':>7}")
        for size in (int(s) for s in options.sizes.split(",")):
            started = time.perf_counter()
            grow(node, conf, containers, have, size)
            have = size
            sys.stderr.write(f"{size} attachments made in {time.perf_counter() - started:.0f} s\n")
            _, out = timed(node, "list", "--json", *books)
            attachments = json.loads(out)["attachments"]
            assert len(attachments) == size and all(a["intact"] for a in attachments), out[:2000]
            times: dict[str, list[float]] = {"list": [], "list --json": [], "--version": []}
            for _ in range(options.runs):
                times["list"].append(timed(node, "list", *books)[0])
                times["list --json"].append(timed(node, "list", "--json", *books)[0])
                times["--version"].append(timed(node, "--version")[0])
            for name, values in times.items():
                print(f"{size:>11}  {name:<14} {min(values):7.1f} {statistics.median(values):7.1f} "
                      f"{max(values):7.1f}", flush=True)
        if options.profile:
            argv = ["nsenter", f"--net={nstools.netns_path(name=node.name)}", sys.executable, "-m", "cProfile",
                    "-s", "tottime", "-m", "cni_bridge", "list", *books]
            out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            print(out[out.index("function calls"):][:6000])
    finally:
        node.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
