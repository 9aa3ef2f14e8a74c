"""Every file under spec-fixtures/ run through the protocol layer (and, for invocations, the executable)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import versions
from cni_bridge.errors import CniError
from cni_bridge.main import load_netconf
from cni_bridge.result import parse_result, render_result

from . import nstools
from .plugin import BIN as EXECUTABLE  # a copy of $CNI_BRIDGE_BIN or dist/cni-bridge with its own bundle cache

FIXTURES = Path(__file__).resolve().parent.parent / "spec-fixtures"


def _fixtures(kind: str) -> list[Any]:
    files = sorted((FIXTURES / kind).glob("*.json"))
    assert files, f"no fixtures in {kind}"
    return [pytest.param(json.loads(f.read_text()), id=f.stem) for f in files]


@pytest.mark.parametrize("fixture", _fixtures("results"))
def test_result_conversions(fixture: dict[str, Any]) -> None:
    result = parse_result(fixture["result"], fixture["version"])
    assert set(fixture["conversions"]) == set(versions.SUPPORTED_VERSIONS)
    for target, expected in fixture["conversions"].items():
        if "error" in expected:
            with pytest.raises(CniError) as failure:
                render_result(result, target)
            assert expected["error"] in failure.value.msg
        else:
            assert render_result(result, target) == expected, f"converting to {target}"


@pytest.mark.parametrize("fixture", _fixtures("prev-results"))
def test_prev_results(fixture: dict[str, Any]) -> None:
    config = fixture["config"]
    expect = fixture["expect"]
    if "error_code" in expect:
        with pytest.raises(CniError) as failure:
            load_netconf(config, "ADD")
        assert failure.value.code == expect["error_code"]
        assert "prevResult" in failure.value.msg
        return
    conf = load_netconf(config, "ADD")
    assert conf.prev_result is not None
    assert render_result(conf.prev_result, conf.cni_version) == expect


@pytest.mark.parametrize("fixture", _fixtures("configs"))
def test_configs(fixture: dict[str, Any]) -> None:
    expect = fixture["expect"]
    if expect == "valid":
        load_netconf(fixture["config"], "ADD")
        return
    with pytest.raises(CniError) as failure:
        load_netconf(fixture["config"], "ADD")
    assert failure.value.code == expect["code"], failure.value.msg
    assert expect["msg_contains"] in failure.value.msg


@pytest.mark.parametrize("fixture", _fixtures("errors"))
def test_error_objects(fixture: dict[str, Any]) -> None:
    error = fixture["error"]
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    rebuilt = CniError(error["code"], error["msg"], error["details"]).to_dict(error["cniVersion"])
    assert rebuilt == error


@pytest.fixture(scope="module")
def node() -> Any:
    """Invocations run in a throwaway namespace: even a mistaken ADD cannot touch the host."""
    if not nstools.have_privileges():
        pytest.skip("needs root to create a throwaway network namespace")
    if not os.path.exists(EXECUTABLE):
        pytest.skip(f"{EXECUTABLE} is not built (./build.sh)")
    with nstools.throwaway_netns(1) as names:
        yield names[0]


def _substitute(value: Any, data_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace("@DATADIR@", data_dir)
    if isinstance(value, list):
        return [_substitute(v, data_dir) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, data_dir) for k, v in value.items()}
    return value


@pytest.mark.integration
@pytest.mark.parametrize("fixture", _fixtures("invocations"))
def test_invocations(fixture: dict[str, Any], node: str) -> None:
    with tempfile.TemporaryDirectory(prefix="cbt-fixture-") as data_dir:
        stdin = _substitute(fixture["stdin"], data_dir)
        if isinstance(stdin, dict) and "stateDir" not in stdin:
            stdin["stateDir"] = os.path.join(data_dir, "state")  # never the host's /run/cni-bridge
        raw = stdin.encode() if isinstance(stdin, str) else json.dumps(stdin).encode()
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **fixture["env"]}
        proc = subprocess.run(["ip", "netns", "exec", node, "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                               EXECUTABLE], input=raw, capture_output=True, timeout=30)
    expect = fixture["expect"]
    assert b"Traceback" not in proc.stdout + proc.stderr
    assert proc.returncode == expect["exit"], (proc.stdout, proc.stderr)
    if expect["exit"] == 0:
        if "stdout_json" in expect:
            assert json.loads(proc.stdout) == expect["stdout_json"]
        else:
            assert proc.stdout == b""
        return
    error = json.loads(proc.stdout)
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    assert error["code"] == expect["code"], error
    assert expect.get("msg_contains", "") in error["msg"], error
