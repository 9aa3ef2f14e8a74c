"""Benchmark through Kubernetes' path: containerd 1.6's CRI plugin runs and tears down a pod
that publishes a hostPort, once with cni-bridge and once with the reference chain it
replaces (bridge + host-local + portmap from /usr/lib/cni), interleaved in one run.

Run as root: .venv/bin/python tests/cri_bench.py [--runs N]

Each case has its own throwaway node namespace and its own containerd (the CRI plugin reads
one network list), set up and cleaned up exactly as tests/integration/test_cri.py does
(tests/cri_harness.py): the real host is never touched. Both lists are dual stack with
gateway, default routes, masquerade and hairpin, and the pod publishes hostPort 8080 ->
80/tcp. Timed: RunPodSandbox (sandbox container + the list's ADD + containerd's loopback),
and StopPodSandbox + RemovePodSandbox (two DELs of the list). Run 0 creates the bridges and
is not counted; each run takes the two cases in random order.

Not a test: timing assertions would only make the suite flaky.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.containerd_harness import guarded  # noqa: E402
from tests.cri_harness import CniNetwork, CriContainerd, cni_bridge_network, reference_network, skip_reason  # noqa: E402
from tests.plugin import Node  # noqa: E402

HOST_PORT = 8080
CASES = ("cni-bridge", "reference bridge+host-local+portmap")


def one_pod(cri: CriContainerd, net: CniNetwork, run: int) -> tuple[float, float]:
    """(RunPodSandbox seconds, StopPodSandbox + RemovePodSandbox seconds) of one hostPort pod."""
    start = time.perf_counter()
    pod = cri.run_pod(f"bench-{run}", ports=[(HOST_PORT, 80)])
    up = time.perf_counter() - start
    ip, additional = cri.pod_ips(pod)  # not timed: that the pod did get its addresses
    if not ip or not additional:
        raise SystemExit(f"{net.name}: pod without both addresses: {ip!r} {additional!r}")
    start = time.perf_counter()
    cri.stop_pod(pod)
    cri.remove_pod(pod)
    down = time.perf_counter() - start
    return up, down


def report(samples: dict[tuple[str, str], list[float]], runs: int) -> None:
    print(f"{'case':52s} {'min':>7s} {'median':>7s} {'max':>7s}   (ms, n={runs}, interleaved)")
    for (case, step), values in samples.items():
        print(f"{case + ' ' + step:52s} {min(values) * 1000:7.1f} {statistics.median(values) * 1000:7.1f} "
              f"{max(values) * 1000:7.1f}")
    for step in ("RunPodSandbox", "Stop+Remove"):
        ours, ref = (statistics.median(samples[(case, step)]) for case in CASES)
        print(f"ratio of medians, {step}: cni-bridge / reference = {ours / ref:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    reason = skip_reason()
    if reason is not None:
        raise SystemExit(f"cannot run: {reason}")
    samples: dict[tuple[str, str], list[float]] = {(case, step): [] for step in ("RunPodSandbox", "Stop+Remove")
                                                   for case in CASES}
    with ExitStack() as stack:
        setups: dict[str, tuple[CriContainerd, CniNetwork]] = {}
        for case in CASES:
            node = Node()
            stack.callback(node.cleanup)
            cri = stack.enter_context(guarded(CriContainerd(node)))
            net = cni_bridge_network(node) if case == CASES[0] else reference_network(node)
            cri.start_with(net)
            setups[case] = (cri, net)
        for run in range(args.runs + 1):
            order = list(CASES)
            random.shuffle(order)
            for case in order:
                up, down = one_pod(*setups[case], run)
                if run:
                    samples[(case, "RunPodSandbox")].append(up)
                    samples[(case, "Stop+Remove")].append(down)
    report(samples, args.runs)


if __name__ == "__main__":
    main()
