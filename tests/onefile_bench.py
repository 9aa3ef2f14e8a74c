"""Start-up of the single file next to the one-folder bundle it replaces, interleaved.

    .venv/bin/python tests/onefile_bench.py [--runs N] [--single-file dist/cni-bridge] [--bundle dist/cni-bridge.d]

CNI_COMMAND=VERSION through: a symlink into the bundle (what dist/cni-bridge was), the single
file once extracted (every start but the first), the single file's first start on a host
(extraction into an empty cache, its checksum, fsync and pruning included). The launcher alone,
without Python's noise: /bin/true packed as the bundle of a single file against /bin/true.
Caches are temp dirs; the host's is never written.
Not a test: timing assertions would only make the suite flaky.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from cni_bridge import onefile  # noqa: E402
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION"}


def timed(argv: list[str], env: dict[str, str], plugin: bool = True) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, input=b"{}", env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or (plugin and b"supportedVersions" not in proc.stdout):
        raise SystemExit(f"{argv} failed: {proc.stdout!r} {proc.stderr!r}")
    return elapsed


def true_as_single_file(work: str) -> str:
    bundle = os.path.join(work, "true.d")
    os.makedirs(bundle)
    shutil.copy("/bin/true", os.path.join(bundle, "cni-bridge"))
    single_file = os.path.join(work, "true")
    onefile.pack(bundle, single_file, os.path.join(work, "true-cache"))
    return single_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--single-file", default=str(ROOT / "dist" / "cni-bridge"))
    parser.add_argument("--bundle", default=str(ROOT / "dist" / "cni-bridge.d"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cbt-onefile-bench-")
    try:
        symlink = os.path.join(work, "cni-bridge")
        os.symlink(os.path.join(os.path.abspath(args.bundle), "cni-bridge"), symlink)
        warm_cache = os.path.join(work, "warm")
        timed([args.single_file], {**ENV, "CNI_BRIDGE_CACHE_DIR": warm_cache})  # its first start
        true = true_as_single_file(work)
        timed([true], ENV, plugin=False)

        def first_start() -> float:
            cold_cache = tempfile.mkdtemp(prefix="cold-", dir=work)
            try:
                return timed([args.single_file], {**ENV, "CNI_BRIDGE_CACHE_DIR": cold_cache})
            finally:
                shutil.rmtree(cold_cache)

        cases: dict[str, Callable[[], float]] = {
            "bundle through a symlink (before)": lambda: timed([symlink], ENV),
            "single file, extracted (after)": lambda: timed([args.single_file],
                                                            {**ENV, "CNI_BRIDGE_CACHE_DIR": warm_cache}),
            "single file, first start on a host": first_start,
            "/bin/true": lambda: timed(["/bin/true"], ENV, plugin=False),
            "/bin/true packed as a single file": lambda: timed([true], ENV, plugin=False),
        }
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            order = list(cases)
            random.shuffle(order)
            for name in order:
                samples[name].append(cases[name]())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"CNI_COMMAND=VERSION, {args.runs} interleaved runs, ms")
    print(f"{'':40} {'min':>7} {'median':>7} {'max':>7}")
    for name, values in samples.items():
        ms = [v * 1000 for v in values]
        print(f"{name:40} {min(ms):7.1f} {statistics.median(ms):7.1f} {max(ms):7.1f}")
    before = statistics.median(samples["bundle through a symlink (before)"])
    after = statistics.median(samples["single file, extracted (after)"])
    print(f"after - before, medians: {(after - before) * 1000:+.1f} ms ({(after / before - 1) * 100:+.0f} %)")
    launcher = statistics.median(samples["/bin/true packed as a single file"]) - statistics.median(samples["/bin/true"])
    print(f"the launcher alone, medians: {launcher * 1000:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
