"""Benchmark: dist/cni-bridge next to the reference plugins, interleaved, medians of many runs.

Run as root: ./build.sh bench [--runs N]. Everything happens inside throwaway namespaces.
Not a test: timing assertions would only make the suite flaky.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import nstools  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = os.environ.get("CNI_BRIDGE_BIN", str(ROOT / "dist" / "cni-bridge"))
REFERENCE = "/usr/lib/cni"


def timed(node: str, argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[float, bytes]:
    full = ["ip", "netns", "exec", node, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]
    start = time.perf_counter()
    proc = subprocess.run(full, input=stdin, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} {env.get('CNI_COMMAND')} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed, proc.stdout


def config(kind: str, data_dir: str, bridge: str, firewall: bool) -> dict[str, object]:
    conf: dict[str, object] = {
        "cniVersion": "1.0.0", "name": f"bench-{kind}", "type": "bridge" if kind == "ref" else "cni-bridge",
        "bridge": bridge, "isGateway": True, "isDefaultGateway": True, "mtu": 1500,
        "ipam": {"type": "host-local", "dataDir": data_dir,
                 "ranges": [[{"subnet": "10.91.0.0/24" if kind == "ref" else "10.92.0.0/24"}]]}}
    if kind == "ours":
        conf["stateDir"] = f"{data_dir}/state"
    if firewall:
        conf["ipMasq"] = True
        if kind == "ours":
            conf["runtimeConfig"] = {"portMappings": [MAPPING]}
    return conf


MAPPING = {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
PORTMAP = {"cniVersion": "1.0.0", "name": "bench-ref", "type": "portmap", "runtimeConfig": {"portMappings": [MAPPING]}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--firewall", action="store_true",
                        help="ipMasq and one published port: ours against the reference bridge + portmap chain")
    args = parser.parse_args()
    ref_name = "reference bridge+host-local" + ("+portmap" if args.firewall else "")
    # `ip netns exec` itself costs a few ms; measured too, so it can be subtracted by eye.
    samples: dict[str, list[float]] = {k: [] for k in (
        "cni-bridge VERSION", "cni-bridge config error", "reference bridge VERSION",
        "cni-bridge ADD", "cni-bridge DEL", f"{ref_name} ADD", f"{ref_name} DEL", "ip netns exec true")}
    data_dir = tempfile.mkdtemp(prefix="cbt-bench-")
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": REFERENCE, "CNI_IFNAME": "eth0"}
    try:
        with nstools.throwaway_netns(1, prefix="cbt-bench-") as (node,):
            nstools.run_in_netns(node, "ip", "link", "set", "lo", "up")
            confs = {"ours": json.dumps(config("ours", data_dir, "cbtbench1", args.firewall)).encode(),
                     "ref": json.dumps(config("ref", data_dir, "cbtbench2", args.firewall)).encode()}
            names = {"ours": "cni-bridge", "ref": ref_name}
            for run in range(args.runs + 1):  # run 0 creates the bridges and is not counted
                order = ["ours", "ref"]
                random.shuffle(order)
                for kind in order:
                    with nstools.throwaway_netns(1, prefix="cbt-bctr-") as (ctr,):
                        env = {**base, "CNI_CONTAINERID": f"bench{run}", "CNI_NETNS": nstools.netns_path(ctr)}
                        if kind == "ours":
                            add, _ = timed(node, [PLUGIN], {**env, "CNI_COMMAND": "ADD"}, confs[kind])
                            delete, _ = timed(node, [PLUGIN], {**env, "CNI_COMMAND": "DEL"}, confs[kind])
                        else:
                            add, delete = reference_chain(node, env, confs[kind], args.firewall)
                    if run:
                        samples[f"{names[kind]} ADD"].append(add)
                        samples[f"{names[kind]} DEL"].append(delete)
                if run:
                    ver = b'{"cniVersion":"1.0.0"}'
                    samples["cni-bridge VERSION"].append(timed(node, [PLUGIN], {"CNI_COMMAND": "VERSION"}, ver)[0])
                    samples["reference bridge VERSION"].append(
                        timed(node, [f"{REFERENCE}/bridge"], {"CNI_COMMAND": "VERSION"}, ver)[0])
                    samples["ip netns exec true"].append(timed(node, ["true"], {}, b"")[0])
                    bad = {**base, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_NETNS": "/nonexistent"}
                    full = ["ip", "netns", "exec", node, "env", "-i", *(f"{k}={v}" for k, v in bad.items()), PLUGIN]
                    start = time.perf_counter()
                    subprocess.run(full, input=b'{"cniVersion":"1.0.0","name":"n","type":"cni-bridge","mtu":"x"}',
                                   capture_output=True)
                    samples["cni-bridge config error"].append(time.perf_counter() - start)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    print(f"{'case':45s} {'median ms':>10s} {'p25':>7s} {'p75':>7s}   (n={args.runs}, each includes `ip netns exec`)")
    for name, values in samples.items():
        q = statistics.quantiles(values, n=4)
        print(f"{name:45s} {statistics.median(values) * 1000:10.1f} {q[0] * 1000:7.1f} {q[2] * 1000:7.1f}")


def reference_chain(node: str, env: dict[str, str], conf: bytes, firewall: bool) -> tuple[float, float]:
    """bridge (+ portmap with bridge's result as prevResult); DEL in reverse, as libcni runs a list."""
    add, result = timed(node, [f"{REFERENCE}/bridge"], {**env, "CNI_COMMAND": "ADD"}, conf)
    chained = b""
    if firewall:
        chained = json.dumps({**PORTMAP, "prevResult": json.loads(result)}).encode()
        extra, _ = timed(node, [f"{REFERENCE}/portmap"], {**env, "CNI_COMMAND": "ADD"}, chained)
        add += extra
    delete = 0.0
    if firewall:
        delete, _ = timed(node, [f"{REFERENCE}/portmap"], {**env, "CNI_COMMAND": "DEL"}, chained)
    prev = json.dumps({**json.loads(conf), "prevResult": json.loads(result)}).encode()
    delete += timed(node, [f"{REFERENCE}/bridge"], {**env, "CNI_COMMAND": "DEL"}, prev)[0]
    return add, delete


if __name__ == "__main__":
    main()
