"""jsonscan (the warm client's JSON reader without json's import) reads what json.loads reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cni_bridge import jsonscan
from cni_bridge.warm_client import decode_header, encode_header

pytestmark = pytest.mark.unit

SAME_AS_JSON = [
    b'{"cniVersion": "1.0.0", "stateDir": "/run/x", "warmHelper": false}',
    b' \t\r\n{"a": [1, 2.5, -3e2, true, null, {"b": "\\u00e9\\ud83d\\ude00"}]} \n',
    '{"name": "r\u00e9seau", "k": "\\n\\t\\""}'.encode(),
    b'{"a": 1, "a": 2}',
    b'"just a string"',
    b"[]",
    b"12",
]
REFUSED = [b"", b"   ", b"{", b'{"a": 1} x', b'{"a": 1}{}', b"{'a': 1}", b'{"a": NaN}', b"Infinity",
           b'{"a": "\x01"}', b"\xff\xfe{\x00}\x00", b'{"a": 01}', b"[1,]"]


@pytest.mark.parametrize("raw", SAME_AS_JSON)
def test_it_reads_what_json_reads(raw: bytes) -> None:
    assert jsonscan.loads(raw) == json.loads(raw)


@pytest.mark.parametrize("raw", REFUSED)
def test_it_refuses_what_is_not_strict_utf8_json(raw: bytes) -> None:
    with pytest.raises(ValueError):
        jsonscan.loads(raw)


def test_too_deep_is_a_recursion_error() -> None:
    with pytest.raises(RecursionError):
        jsonscan.loads(b"[" * 100000 + b"]" * 100000)


def test_it_does_not_import_json() -> None:
    code = ("import sys; from cni_bridge.jsonscan import loads; loads(b'{\"a\": [1]}'); "
            "print(sorted(m for m in ('json', 're', 'enum') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-E", "-S", "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert out.stdout.strip() == "[]"


def test_the_hand_over_header_carries_the_environment_as_it_was() -> None:
    environ = {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B==2", "EMPTY": "", "ODD": "caf\udce9 \n=",
               "PATH": "/usr/bin:/bin"}
    assert decode_header(encode_header(environ, "/tmp/d\u00e9 x", 0o027)) == (environ, "/tmp/d\u00e9 x", 0o027)


CLIENT_PROBE = """
import io, os, sys
from cni_bridge import main, warm_client
sys.stdin = io.TextIOWrapper(io.BytesIO(b'{"cniVersion": "1.0.0"}'))
main.main([], {"CNI_COMMAND": "VERSION"})
state = "/tmp/cbt-jsonscan-%d" % os.getpid()  # tempfile would import re itself
os.mkdir(state, 0o700)
try:
    raw = ('{"cniVersion": "1.0.0", "name": "n", "type": "cni-bridge", "stateDir": "%s"}' % state).encode()
    handed = warm_client.hand_over(raw, {"CNI_COMMAND": "ADD"})
finally:
    os.rmdir(state)
sys.stderr.write("LOADED=%r %r\\n" % (handed.rc, sorted(m for m in ("json", "re", "enum") if m in sys.modules)))
"""


def test_version_and_the_clients_look_for_a_helper_do_not_import_json() -> None:
    """The part of a warm request that runs in the plugin process (here: no helper is
    listening, so it ends where the hand-over would begin) and VERSION stay without json."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-E", "-S", "-c", CLIENT_PROBE], capture_output=True, text=True,
                          cwd=root, check=True)
    assert "LOADED=None []" in proc.stderr, proc.stderr


NEVER_IMPORTED_PROBE = """
import sys
from cni_bridge.jsonscan import loads
failed = []
for raw in {cases!r}:
    try:
        loads(raw)
    except ValueError:
        continue
    failed.append(raw)
print(failed, "json" in sys.modules)
"""


def test_it_refuses_bad_text_where_json_was_never_imported() -> None:
    """The C scanner's own error (JSONDecodeError) lives in json.decoder, which the plugin's
    process has not loaded: every kind of bad text must still be a ValueError."""
    cases = [*REFUSED, b'{"a\x00": 1}', '{"a": 1}'.encode("utf-16-le"), '{"a": 1}'.encode("utf-32-le")]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-E", "-S", "-c", NEVER_IMPORTED_PROBE.format(cases=cases)],
                         capture_output=True, text=True, cwd=root, check=False)
    assert out.stdout.strip() == "[] False", out.stdout + out.stderr
