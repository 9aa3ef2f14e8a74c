"""`./build.sh demo` (tests/demo.sh): it works, and it leaves nothing behind, also when interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.plugin import BIN, REPO, requires_plugin
from tests.warm import helper_processes

pytestmark = [pytest.mark.integration, requires_plugin]

DEMO = os.path.join(REPO, "tests", "demo.sh")


def _leftovers() -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = [line.split()[0] for line in namespaces.splitlines() if line.startswith("cbdemo-")]
    # The demo runs the runner under `ip netns exec`: its plugins must start no warm helper
    # (whose socket would be in the demo's work directory), which would idle on after it.
    helpers = [f"helper {pid} {path}" for pid, path in helper_processes().items() if "/cni-bridge-demo." in path]
    return left + helpers + [f"/tmp/{d}" for d in os.listdir("/tmp") if d.startswith("cni-bridge-demo.")]


@pytest.fixture
def clean_before() -> list[str]:
    return _leftovers()


def test_demo_fetches_through_the_published_port_and_cleans_up(clean_before: list[str]) -> None:
    proc = subprocess.run([DEMO], env={**os.environ, "CNI_BRIDGE_BIN": BIN}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "attached   container eth0: 10.203.0." in out
    assert "DNAT" in out and "--to-destination 10.203.0." in out
    assert 'http://127.0.0.1:8080/ -> "hello from the container' in out
    assert 'http://203.0.113.10:8080/ -> "hello from the container' in out
    assert "check      ok" in out
    assert "del        ok: no veth, no iptables rule, no reservation, no cached result left" in out
    assert _leftovers() == clean_before


@pytest.mark.parametrize("after_line", ["attached", "fetched"])
def test_interrupted_demo_removes_everything(clean_before: list[str], after_line: str) -> None:
    proc = subprocess.Popen([DEMO], env={**os.environ, "CNI_BRIDGE_BIN": BIN}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.strip().startswith(after_line) or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "interrupted: cleaning up" in err
    assert _leftovers() == clean_before
