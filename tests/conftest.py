"""Shared pytest configuration."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "unit: pure-Python tests, no root or external binaries needed")
    # "integration" is registered in pyproject.toml.


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The `node` fixture in each helper mode its module runs in ([helper-off], [helper-require])."""
    definitions = metafunc._arg2fixturedefs.get("node", ())  # noqa: SLF001 - which `node` this is
    if not definitions or definitions[-1].func.__module__ != "tests.plugin":
        return  # not the plugin's node (tests/firewall_node.py drives the firewall code directly)
    from tests.plugin import helper_modes
    modes = helper_modes(metafunc.module.__name__)
    if modes != ["off"]:
        metafunc.parametrize("node", modes, indirect=True, ids=[f"helper-{mode}" for mode in modes])


def _host_snapshot() -> dict[str, str]:
    """What the test hygiene rules promise to leave as it was on the real host."""
    import os
    import subprocess

    from tests.warm import helper_processes

    def out(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "ip netns": out("ip", "netns", "list"),
        "ip link": "\n".join(sorted(line.split("@")[0].split(":")[1].strip()
                                    for line in out("ip", "-o", "link", "show").splitlines() if ":" in line)),
        "iptables-save": "\n".join(line for line in (out("iptables-save") + out("ip6tables-save")).splitlines()
                                   if line.startswith(("-A", ":"))),
        "iptables-legacy-save": "\n".join(line for line in (out("iptables-legacy-save") + out("ip6tables-legacy-save"))
                                          .splitlines() if line.startswith(("-A", ":"))),
        "nft list tables": out("nft", "list", "tables"),  # a leaked nftables table of ours shows here
        "/run/cni-bridge": str(os.path.exists("/run/cni-bridge")),
        "warm helper processes": "\n".join(sorted(helper_processes().values())),
        # Where runtimes and the runner keep plugins, network lists and cached results.
        **{path: "\n".join(sorted(os.listdir(path))) if os.path.isdir(path) else "absent"
           for path in ("/opt/cni/bin", "/etc/cni/net.d", "/var/lib/cni", "/var/lib/cni/results")},
        # The single file's bundle cache: tests run copies that extract elsewhere.
        "/var/lib/cni-bridge": str(os.path.exists("/var/lib/cni-bridge")),
    }


_BEFORE: dict[str, str] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    _BEFORE.update(_host_snapshot())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    after = _host_snapshot()
    changed = [key for key in _BEFORE if _BEFORE[key] != after.get(key)]
    if changed:
        import sys
        for key in changed:
            sys.stderr.write(f"\nHOST HYGIENE: the test run changed `{key}`:\n--- before\n{_BEFORE[key]}\n"
                             f"--- after\n{after.get(key)}\n")
        session.exitstatus = 1
