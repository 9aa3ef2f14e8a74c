"""The cheap paths stay cheap: VERSION, config errors and DEL of an unknown container must not
load pyroute2 (~20-220 ms) or jsonschema (~110 ms, only to explain a rejected config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

from tests import nstools

ROOT = Path(__file__).resolve().parent.parent
# Probes run with -S: the interpreter alone, as in the bundle (site and the editable install's
# finder would load modules of their own); the dependencies come from this interpreter's
# site-packages.
SOURCES = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
sys.path.append({sysconfig.get_paths()["purelib"]!r})
"""
PROBE = """
import io, json
from cni_bridge.main import main
sys.stdin = io.TextIOWrapper(io.BytesIO({stdin!r}))
code = main([], {environ!r})
loaded = sorted(m for m in {watched!r} if m in sys.modules)
sys.stderr.write("\\nLOADED=" + json.dumps([code, loaded]) + "\\n")
"""


HEAVY = ("pyroute2", "jsonschema", "subprocess", "asyncio", "logging", "dataclasses", "typing")
# What pyroute2's message layer would drag in, and OpenSSL for a digest of a few bytes.
# typing, threading and weakref: pyroute2's message modules import them for annotations, one
# lock, one thread-local and a proxy (pyroute2_lean serves those without the modules).
NOT_FOR_ADD = ("multiprocessing", "platform", "logging", "traceback", "pkgutil", "hashlib", "_hashlib", "jsonschema",
               "asyncio", "typing", "threading", "weakref")


def loaded_modules(node: str, environ: dict[str, str], stdin: bytes,
                   watched: tuple[str, ...] = HEAVY) -> tuple[int, list[str]]:
    script = SOURCES + PROBE.format(stdin=stdin, environ=environ, watched=watched)
    proc = subprocess.run(["ip", "netns", "exec", node, sys.executable, "-I", "-S", "-c", script],
                          capture_output=True, timeout=30)
    marker = [line for line in proc.stderr.decode().splitlines() if line.startswith("LOADED=")]
    assert marker, proc.stderr.decode()
    code, loaded = json.loads(marker[-1][len("LOADED="):])
    return code, loaded


@pytest.fixture(scope="module")
def node() -> object:
    if not nstools.have_privileges():
        pytest.skip("needs root for a throwaway namespace")
    with nstools.throwaway_netns(1) as names:
        yield names[0]


def test_version_loads_nothing_heavy(node: str) -> None:
    code, loaded = loaded_modules(node, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert code == 0
    assert loaded == []


def test_invalid_environment_loads_nothing_heavy(node: str) -> None:
    code, loaded = loaded_modules(node, {"CNI_COMMAND": "ADD"}, b"{}")
    assert code == 1
    assert loaded == []


def test_config_error_loads_no_netlink(node: str) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/cbt-none", "CNI_IFNAME": "eth0"}
    bad = {"cniVersion": "1.0.0", "name": "n", "type": "cni-bridge", "mtu": "large"}
    code, loaded = loaded_modules(node, env, json.dumps(bad).encode())
    assert code == 1
    assert "pyroute2" not in loaded
    assert "jsonschema" in loaded  # it is the one that explains the rejection


def test_semantic_config_error_loads_neither(node: str) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/cbt-none", "CNI_IFNAME": "eth0"}
    bad = {"cniVersion": "1.0.0", "name": "n", "type": "cni-bridge",
           "ipam": {"type": "host-local", "subnet": "10.0.0.5/24"}}
    code, loaded = loaded_modules(node, env, json.dumps(bad).encode())
    assert code == 1
    assert loaded == []


def test_del_of_unknown_container_loads_no_netlink(node: str) -> None:
    with tempfile.TemporaryDirectory(prefix="cbt-lazy-") as data_dir:
        conf = {"cniVersion": "1.0.0", "name": "lazynet", "type": "cni-bridge", "stateDir": f"{data_dir}/state",
                "ipam": {"type": "host-local", "subnet": "10.250.0.0/24", "dataDir": data_dir}}
        env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "never-added", "CNI_NETNS": "", "CNI_IFNAME": "eth0",
               "PATH": os.environ.get("PATH", "")}
        code, loaded = loaded_modules(node, env, json.dumps(conf).encode())
        assert os.listdir(data_dir) == []  # DEL of an unknown network creates no store or state directory
    assert code == 0
    assert loaded == []


def test_add_and_del_load_only_what_they_use() -> None:
    """A whole ADD (veth, addresses, routes, iptables rules) and its DEL, from source."""
    if not nstools.have_privileges():
        pytest.skip("needs root for throwaway namespaces")
    with nstools.throwaway_netns(2) as (node, container), tempfile.TemporaryDirectory(prefix="cbt-lazy-") as work:
        conf = {"cniVersion": "1.0.0", "name": "lazyadd", "type": "cni-bridge", "bridge": "cbt-lazy0",
                "isGateway": True, "ipMasq": True, "stateDir": f"{work}/state",
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
                "ipam": {"type": "host-local", "subnet": "10.251.0.0/24", "dataDir": f"{work}/ipam"}}
        for command in ("ADD", "DEL"):
            env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "lazy1", "CNI_NETNS": nstools.netns_path(container),
                   "CNI_IFNAME": "eth0", "CNI_BRIDGE_HELPER": "0", "PATH": os.environ.get("PATH", "")}
            code, loaded = loaded_modules(node, env, json.dumps(conf).encode(), NOT_FOR_ADD)
            assert (command, code, loaded) == (command, 0, [])


STAND_INS_PROBE = """
from cni_bridge.network import netlink, pyroute2_lean
before = sorted(m for m in ("typing", "threading", "weakref") if m in sys.modules)
nfct = pyroute2_lean.load("netlink.nfnetlink.nfctsocket")  # pyroute2's socket core: asyncio, threads
import threading, typing, weakref
from pyroute2 import common
real = [typing.Optional[int] == typing.Union[int, None], type(typing.Any).__module__, callable(threading.Thread),
        weakref.WeakValueDictionary.__module__, type(common._uuid32_lock).__name__]
msg = netlink._ifinfmsg()
msg["index"] = 7
msg["attrs"] = [("IFLA_IFNAME", "cbt-probe")]
msg.encode()
decoded = netlink._ifinfmsg(msg.data)
decoded.decode()
print(repr((before, real, decoded.get_attr("IFLA_IFNAME"), type(nfct.nfct_msg).__name__)))
"""


def test_pyroute2_stand_ins_serve_only_pyroute2() -> None:
    """What pyroute2_lean serves in place of typing, threading and weakref while pyroute2 loads:
    nothing else in the process (a later import, or the standard modules pyroute2's socket core
    loads) ever sees a placeholder, and the message classes still encode and decode."""
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", SOURCES + STAND_INS_PROBE], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == repr(([], [True, "typing", True, "weakref", "lock"], "cbt-probe", "type"))
