"""The built executable, run as a runtime runs it, on every kind of bad input.

For each case: exit status 1; stdout is exactly one JSON object with the keys cniVersion,
code, msg and details and nothing else; the expected code; no Python traceback on stdout
or stderr. The environment is clean: PATH plus the CNI_* variables a case sets.

Every ADD here is invalid input, and CNI_NETNS names a namespace that does not exist, so
even a plugin bug cannot touch the host.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.plugin import BIN  # a copy of $CNI_BRIDGE_BIN or dist/cni-bridge with its own bundle cache

if not (os.path.isfile(BIN) and os.access(BIN, os.X_OK)):
    pytest.skip(f"cni-bridge executable {BIN} not found: run ./build.sh or set CNI_BRIDGE_BIN",
                allow_module_level=True)

SUPPORTED = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
NETNS = "/var/run/netns/cbt-does-not-exist"
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}

ADD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "cbt-ctr-1",
    "CNI_NETNS": NETNS,
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
}
# Invalid (vlan out of range), so that a case whose own defect were missed still does nothing.
BAD_CONF: dict[str, Any] = {"cniVersion": "1.0.0", "name": "cbtnet", "type": "cni-bridge", "bridge": "cbt0",
                            "vlan": 5000, "ipam": {}}


@dataclass
class Run:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")


def run(env: dict[str, str], stdin: bytes | str | dict[str, Any] | Any = b"") -> Run:
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    full.update(env)
    if isinstance(stdin, bytes):
        data = stdin
    elif isinstance(stdin, str):
        data = stdin.encode("utf-8", "surrogateescape")
    else:
        data = json.dumps(stdin).encode()
    proc = subprocess.run([BIN], env=full, input=data, capture_output=True, timeout=30, check=False)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def problems(result: Run, codes: set[int] | None = None) -> list[str]:
    """What is wrong with an error answer; empty when it is a proper CNI error."""
    found = []
    if result.returncode != 1:
        found.append(f"exit status {result.returncode}, expected 1")
    for stream, text in (("stdout", result.out), ("stderr", result.err)):
        if "Traceback" in text:
            found.append(f"traceback on {stream}")
    try:
        obj = json.loads(result.stdout)  # raises on anything after the object but whitespace
    except ValueError as exc:
        return found + [f"stdout is not one JSON value: {exc}: {result.out[:300]!r}"]
    if not isinstance(obj, dict) or set(obj) != ERROR_KEYS:
        return found + [f"stdout is not an error object with {sorted(ERROR_KEYS)}: {result.out[:300]!r}"]
    if not isinstance(obj["code"], int) or not isinstance(obj["msg"], str) or not isinstance(obj["details"], str):
        found.append(f"bad field types: {obj}")
    if obj["cniVersion"] not in SUPPORTED:
        found.append(f"error cniVersion {obj['cniVersion']!r}")
    if codes is not None and obj["code"] not in codes:
        found.append(f"code {obj['code']} not in {sorted(codes)}: {obj['msg']} / {obj['details']}")
    return found


def check_error(result: Run, code: int) -> dict[str, Any]:
    found = problems(result, {code})
    assert not found, f"{found}\nstdout: {result.out[:600]}\nstderr: {result.err[-600:]}"
    obj: dict[str, Any] = json.loads(result.stdout)
    return obj


def with_env(base: dict[str, str], **changes: str | None) -> dict[str, str]:
    env = dict(base)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def conf(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(json.dumps(BAD_CONF))
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


def valid_vlan(**changes: Any) -> dict[str, Any]:
    """BAD_CONF without its vlan defect, plus the one defect a case is about."""
    return conf(vlan=None, **changes)


# ----------------------------------------------------------------- environment

DEL_ENV = with_env(ADD_ENV, CNI_COMMAND="DEL")
CHECK_ENV = with_env(ADD_ENV, CNI_COMMAND="CHECK")
GC_ENV = {"CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}

ENV_CASES: list[tuple[str, dict[str, str], list[str]]] = [
    # (id, environment, words the msg must contain)
    ("add-missing-containerid", with_env(ADD_ENV, CNI_CONTAINERID=None), ["CNI_CONTAINERID"]),
    ("add-missing-netns", with_env(ADD_ENV, CNI_NETNS=None), ["CNI_NETNS"]),
    ("add-missing-ifname", with_env(ADD_ENV, CNI_IFNAME=None), ["CNI_IFNAME"]),
    ("add-empty-netns", with_env(ADD_ENV, CNI_NETNS=""), ["CNI_NETNS"]),
    ("add-missing-all", {"CNI_COMMAND": "ADD"}, ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"]),
    ("check-missing-netns", with_env(CHECK_ENV, CNI_NETNS=None), ["CNI_NETNS"]),
    ("check-missing-containerid", with_env(CHECK_ENV, CNI_CONTAINERID=None), ["CNI_CONTAINERID"]),
    ("del-missing-containerid", with_env(DEL_ENV, CNI_CONTAINERID=None), ["CNI_CONTAINERID"]),
    ("del-missing-ifname", with_env(DEL_ENV, CNI_IFNAME=None), ["CNI_IFNAME"]),
    ("gc-missing-path", {"CNI_COMMAND": "GC"}, ["CNI_PATH"]),
    ("unknown-command", with_env(ADD_ENV, CNI_COMMAND="FOO"), ["CNI_COMMAND", "FOO"]),
    ("lowercase-command", with_env(ADD_ENV, CNI_COMMAND="add"), ["CNI_COMMAND"]),
    ("containerid-slash", with_env(ADD_ENV, CNI_CONTAINERID="a/b"), ["CNI_CONTAINERID"]),
    ("containerid-leading-dash", with_env(ADD_ENV, CNI_CONTAINERID="-abc"), ["CNI_CONTAINERID"]),
    ("containerid-dotdot", with_env(DEL_ENV, CNI_CONTAINERID="../etc"), ["CNI_CONTAINERID"]),
    ("containerid-newline", with_env(ADD_ENV, CNI_CONTAINERID="abc\n"), ["CNI_CONTAINERID"]),
    ("ifname-slash", with_env(ADD_ENV, CNI_IFNAME="eth0/1"), ["CNI_IFNAME"]),
    ("ifname-colon", with_env(ADD_ENV, CNI_IFNAME="eth0:1"), ["CNI_IFNAME"]),
    ("ifname-dot", with_env(ADD_ENV, CNI_IFNAME="."), ["CNI_IFNAME"]),
    ("ifname-dotdot", with_env(DEL_ENV, CNI_IFNAME=".."), ["CNI_IFNAME"]),
    ("ifname-space", with_env(ADD_ENV, CNI_IFNAME="eth 0"), ["CNI_IFNAME"]),
    ("ifname-tab", with_env(CHECK_ENV, CNI_IFNAME="eth\t0"), ["CNI_IFNAME"]),
    ("ifname-nbsp", with_env(ADD_ENV, CNI_IFNAME="eth\u00a00"), ["CNI_IFNAME"]),
    ("ifname-16", with_env(ADD_ENV, CNI_IFNAME="abcdefghijklmnop"), ["CNI_IFNAME"]),
    ("ifname-16-bytes-utf8", with_env(ADD_ENV, CNI_IFNAME="é" * 8), ["CNI_IFNAME"]),
    ("ifname-empty", with_env(ADD_ENV, CNI_IFNAME=""), ["CNI_IFNAME"]),
    # A raw 0xff byte in the environment (os.environ holds it as a lone surrogate).
    ("ifname-not-utf8", with_env(ADD_ENV, CNI_IFNAME="eth\udcff"), ["CNI_IFNAME"]),
    ("containerid-not-utf8", with_env(ADD_ENV, CNI_CONTAINERID="ctr\udcff"), ["CNI_CONTAINERID"]),
    ("cni-args-unknown-key", with_env(ADD_ENV, CNI_ARGS="ip=10.0.0.5"), ["CNI_ARGS", "ip=10.0.0.5"]),
    ("cni-args-invalid-pair", with_env(ADD_ENV, CNI_ARGS="IP"), ["CNI_ARGS"]),
    ("cni-args-invalid-ip", with_env(ADD_ENV, CNI_ARGS="IP=10.0.0.300"), ["CNI_ARGS", "IP"]),
    ("cni-args-invalid-mac", with_env(ADD_ENV, CNI_ARGS="MAC=0a:58:00"), ["CNI_ARGS", "MAC"]),
]


@pytest.mark.parametrize(("env", "words"), [c[1:] for c in ENV_CASES], ids=[c[0] for c in ENV_CASES])
def test_invalid_environment(env: dict[str, str], words: list[str]) -> None:
    # The CNI_ARGS cases need a config that is otherwise valid: CNI_ARGS is read after the config.
    stdin = valid_vlan(bridge="cbt/0") if env.get("CNI_ARGS") is None else valid_vlan()
    if env.get("CNI_ARGS") is not None:
        # Safety: these reach build_request, after which ADD would start work. A config
        # problem found before CNI_ARGS would surface as code 7, so keep it valid but
        # point IPAM at a delegate that cannot exist, and use a netns that does not exist.
        stdin["ipam"] = {"type": "cbt-no-such-ipam"}
    obj = check_error(run(env, stdin), 4)
    for word in words:
        assert word in obj["msg"], obj


# ----------------------------------------------------------------- stdin

STDIN_CASES: list[tuple[str, bytes | str | Any, set[int]]] = [
    ("empty", b"", {6}),
    ("whitespace", b"  \n\t ", {6}),
    ("truncated", b'{"cniVersion": "1.0.0", "name": ', {6}),
    ("not-json", b"cniVersion=1.0.0", {6}),
    ("trailing-garbage", b'{"name": "x"} {}', {6}),
    ("not-utf8", b'{"name": "\xff\xfe"}', {6}),
    ("nul-bytes", b"\x00\x00\x00\x00", {6}),
    ("list", [BAD_CONF], {6}),
    ("string", "\"cni\"", {6}),
    ("number", b"42", {6}),
    ("null", b"null", {6}),
    ("true", b"true", {6}),
    ("deeply-nested-array", b"[" * 100000, {6}),
    ("deeply-nested-object", b'{"a":' * 100000, {6}),
]
# Nesting just under Python's recursion limit decodes, and then trips whatever recurses next
# (jsonschema's error message repr()s the value). Where exactly depends on the stack depth of
# the build, so a window of depths is tried: each is a decode error (6) or a config error (7).
STDIN_CASES += [
    (f"nested-{depth}-in-field",
     ('{"cniVersion": "1.0.0", "name": "cbtnet", "type": "cni-bridge", "isGateway": '
      + "[" * depth + "]" * depth + "}").encode(), {6, 7})
    for depth in (900, 950, 970, 980, 985, 990, 995, 999, 1005)
]


@pytest.mark.parametrize(("stdin", "codes"), [c[1:] for c in STDIN_CASES], ids=[c[0] for c in STDIN_CASES])
def test_bad_stdin(stdin: Any, codes: set[int]) -> None:
    result = run(ADD_ENV, stdin)
    found = problems(result, codes)
    assert not found, f"{found}\nstderr: {result.err[-600:]}"


def test_empty_stdin_says_so() -> None:
    obj = check_error(run(ADD_ENV, b""), 6)
    assert "empty" in (obj["msg"] + obj["details"]).lower()


# ----------------------------------------------------------------- versions

@pytest.mark.parametrize("env", [ADD_ENV, CHECK_ENV, GC_ENV, {"CNI_COMMAND": "STATUS"}],
                         ids=["ADD", "CHECK", "GC", "STATUS"])
def test_unknown_cni_version(env: dict[str, str]) -> None:
    obj = check_error(run(env, conf(cniVersion="9.9.9")), 1)
    text = obj["msg"] + " " + obj["details"]
    assert "9.9.9" in text
    for version in SUPPORTED:
        assert version in text, f"{version} missing from {text!r}"


def test_del_with_unknown_cni_version_completes_and_says_why() -> None:
    # A runtime sends DEL after an ADD refused for its version: the attachment is still known.
    result = run(DEL_ENV, conf(cniVersion="9.9.9"))
    assert result.returncode == 0 and result.stdout == b"", result
    assert "9.9.9" in result.err


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-8-sig"])
def test_stdin_must_be_plain_utf8(encoding: str) -> None:
    # json.loads(bytes) would guess these encodings; Go, and therefore every runtime, reads UTF-8.
    check_error(run(ADD_ENV, json.dumps(conf()).encode(encoding)), 6)


def test_encoded_surrogate_on_stdin_is_a_decode_error() -> None:
    # CESU-style bytes for U+D800 inside a string: not UTF-8.
    data = json.dumps(conf()).encode().replace(b"cbtnet", b"cbt\xed\xa0\x80net")
    check_error(run(ADD_ENV, data), 6)


@pytest.mark.parametrize("version", ["1.0", "1.0.0 ", "v1.0.0", "0.3", "1.2.0"])
def test_other_unsupported_version_strings(version: str) -> None:
    check_error(run(ADD_ENV, conf(cniVersion=version)), 1)


@pytest.mark.parametrize("version", [1, 1.0, None, ["1.0.0"], {"v": "1.0.0"}, True], ids=repr)
def test_non_string_cni_version(version: Any) -> None:
    found = problems(run(ADD_ENV, conf(cniVersion=version)), {1, 7})
    assert not found


@pytest.mark.parametrize(("env", "version", "command"), [
    (CHECK_ENV, "0.3.1", "CHECK"),
    (CHECK_ENV, "0.2.0", "CHECK"),
    (CHECK_ENV, "0.1.0", "CHECK"),
    ({"CNI_COMMAND": "STATUS"}, "1.0.0", "STATUS"),
    ({"CNI_COMMAND": "STATUS"}, "0.4.0", "STATUS"),
    (GC_ENV, "0.4.0", "GC"),
    (GC_ENV, "1.0.0", "GC"),
], ids=["check-0.3.1", "check-0.2.0", "check-0.1.0", "status-1.0.0", "status-0.4.0", "gc-0.4.0", "gc-1.0.0"])
def test_command_newer_than_config_version(env: dict[str, str], version: str, command: str) -> None:
    obj = check_error(run(env, conf(cniVersion=version)), 1)
    assert command in obj["msg"]
    assert obj["cniVersion"] == version


def test_config_without_cni_version_is_0_1_0() -> None:
    # 0.1.0 has no CHECK: the implicit version is what the refusal is about.
    obj = check_error(run(CHECK_ENV, conf(cniVersion=None)), 1)
    assert "0.4.0" in obj["details"] and "0.1.0" in obj["details"]


# ----------------------------------------------------------------- config fields

CONFIG_CASES: list[tuple[str, dict[str, str], dict[str, Any], str]] = [
    # (id, env, config, path the msg must start with)
    ("missing-name", ADD_ENV, valid_vlan(name=None, bridge="cbt/0"), "name"),
    ("name-dotdot-slash", ADD_ENV, valid_vlan(name="../x"), "name"),
    ("name-slash", DEL_ENV, valid_vlan(name="a/b"), "name"),
    ("name-number", ADD_ENV, valid_vlan(name=5), "name"),
    ("vlan", ADD_ENV, conf(), "vlan"),
    ("isGateway-string", ADD_ENV, valid_vlan(isGateway="yes"), "isGateway"),
    ("mtu-too-large", ADD_ENV, valid_vlan(mtu=100000), "mtu"),
    ("bridge-slash", ADD_ENV, valid_vlan(bridge="br/0"), "bridge"),
    ("bridge-too-long", CHECK_ENV, valid_vlan(bridge="abcdefghijklmnop"), "bridge"),
    ("subnet-type", ADD_ENV, valid_vlan(ipam={"type": "host-local", "ranges": [[{"subnet": 5}]]}),
     "ipam.ranges[0][0].subnet"),
    ("hostPort-zero", ADD_ENV, valid_vlan(runtimeConfig={"portMappings": [{"hostPort": 0, "containerPort": 80}]}),
     "runtimeConfig.portMappings[0].hostPort"),
    ("runtime-mac", ADD_ENV, valid_vlan(runtimeConfig={"mac": "zz:zz"}), "runtimeConfig.mac"),
    ("logLevel", ADD_ENV, valid_vlan(logLevel="trace"), "logLevel"),
    ("hairpin-and-promisc", ADD_ENV, valid_vlan(hairpinMode=True, promiscMode=True), "hairpinMode"),
    ("chain-and-bit", ADD_ENV, valid_vlan(externalSetMarkChain="MARK", markMasqBit=3), "externalSetMarkChain"),
    ("subnet-prefix-33", ADD_ENV, valid_vlan(ipam={"type": "host-local", "subnet": "10.0.0.0/33"}), "ipam"),
    ("runtime-ips-invalid", ADD_ENV, valid_vlan(runtimeConfig={"ips": ["10.0.0.300"]}), "runtimeConfig.ips"),
    ("prev-result-bad-cidr", ADD_ENV,
     valid_vlan(prevResult={"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.500/16"}]}),
     "prevResult.ips[0].address"),
    ("prev-result-version-mismatch", CHECK_ENV,
     valid_vlan(cniVersion="0.4.0", prevResult={"ips": [{"version": "4", "address": "fd00::5/64"}]}),
     "prevResult.ips[0].version"),
    ("gc-attachments-not-list", GC_ENV, valid_vlan(cniVersion="1.1.0", **{"cni.dev/valid-attachments": {}}),
     "cni.dev/valid-attachments"),
]


@pytest.mark.parametrize(("env", "doc", "path"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_invalid_config(env: dict[str, str], doc: dict[str, Any], path: str) -> None:
    obj = check_error(run(env, doc), 7)
    assert obj["msg"].startswith(path), obj


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("ipMasqBackend", "firewalld", "firewalld"),
    ("backend", "firewalld", "firewalld"),
    ("macspoofchk", True, "true"),
], ids=["ipMasqBackend-firewalld", "backend-firewalld", "macspoofchk-true"])
def test_unsupported_field_values(key: str, value: Any, shown: str) -> None:
    obj = check_error(run(ADD_ENV, valid_vlan(**{key: value})), 2)
    assert key in obj["msg"] and shown in obj["msg"], obj


@pytest.mark.parametrize("keys", [
    {"firewallBackend": "iptables", "ipMasqBackend": "nftables"},
    {"firewallBackend": "nftables", "backend": "iptables"},
    {"ipMasqBackend": "iptables", "backend": "nftables"},
], ids=["firewallBackend-ipMasqBackend", "firewallBackend-backend", "ipMasqBackend-backend"])
def test_contradicting_firewall_backends(keys: dict[str, str]) -> None:
    obj = check_error(run(ADD_ENV, valid_vlan(**keys)), 7)
    second = list(keys)[1]
    assert obj["msg"].startswith(f"{second}: ") and "conflicts with" in obj["msg"], obj


def test_unknown_firewall_backend() -> None:
    obj = check_error(run(ADD_ENV, valid_vlan(firewallBackend="firewalld")), 7)
    assert obj["msg"].startswith("firewallBackend"), obj


def test_error_cni_version_follows_the_config() -> None:
    obj = check_error(run(ADD_ENV, conf(cniVersion="0.3.1")), 7)
    assert obj["cniVersion"] == "0.3.1"


# ----------------------------------------------------------------- no command, VERSION

def test_no_command_describes_the_plugin() -> None:
    result = run({}, b"")
    assert result.returncode == 0
    assert result.stdout == b""
    assert "cni-bridge" in result.err
    for version in SUPPORTED:
        assert version in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("version", SUPPORTED)
def test_version_echoes_the_asked_version(version: str) -> None:
    result = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": version})
    assert result.returncode == 0, result.err
    assert json.loads(result.stdout) == {"cniVersion": version, "supportedVersions": SUPPORTED}
    assert "Traceback" not in result.err


@pytest.mark.parametrize("stdin", [b"", b"garbage", b"[]", b'{"cniVersion": 1}', b"[" * 100000],
                         ids=["empty", "garbage", "list", "number-version", "deep"])
def test_version_answers_whatever_stdin_holds(stdin: bytes) -> None:
    result = run({"CNI_COMMAND": "VERSION"}, stdin)
    assert result.returncode == 0, result.err
    assert json.loads(result.stdout)["supportedVersions"] == SUPPORTED
    assert "Traceback" not in result.err


# ----------------------------------------------------------------- fuzz

PROPERTY_NAMES = ["cniVersion", "name", "type", "bridge", "isGateway", "ipMasq", "mtu", "vlan", "ipam", "dns",
                  "runtimeConfig", "args", "prevResult", "capabilities", "logLevel", "hairpinMode",
                  "cni.dev/valid-attachments", "subnet", "ranges", "portMappings", "ips", "mac"]
# Never a valid network name, so no fuzzed document can pass validation and start real work.
INVALID_NAMES: list[Any] = ["", "../x", "-x", "a b", "a/b", "x" * 201, 5, None, [], {}, True]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 4 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 68, 1500, 4095, 65536, 2 ** 64, rng.randint(-10 ** 6, 10 ** 6), 1.5, -0.0, 1e308])
    if kind == 3:
        return rng.choice(["", "x", "10.0.0.1", "10.0.0.0/24", "fd00::/64", "0a:58:00:00:00:01", "host-local",
                           "cni-bridge", "1.0.0", "é\u00a0", "\u0000", "a" * rng.randint(0, 400)])
    if kind == 4:
        return "".join(chr(rng.randint(1, 0x2FFF)) for _ in range(rng.randint(0, 20)))
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(PROPERTY_NAMES + ["x", ""]): random_json(rng, depth + 1) for _ in range(rng.randint(0, 6))}


def random_document(rng: random.Random) -> Any:
    value = random_json(rng)
    if rng.random() < 0.7:
        doc = value if isinstance(value, dict) else {}
        for _ in range(rng.randint(0, 8)):
            doc[rng.choice(PROPERTY_NAMES)] = random_json(rng, 1)
        if rng.random() < 0.5:
            doc["cniVersion"] = rng.choice(SUPPORTED)
        value = doc
    if isinstance(value, dict):
        if rng.random() < 0.3:
            value.pop("name", None)
        else:
            value["name"] = rng.choice(INVALID_NAMES)
    return value


def random_bytes(rng: random.Random) -> bytes:
    size = rng.choice([0, 1, 2, 8, 64, 512])
    raw = bytes(rng.randrange(256) for _ in range(size))
    prefix = rng.choice([b"", b"{", b"[", b'{"name":', b'{"cniVersion":"1.0.0",', b"\xef\xbb\xbf"])
    return prefix + raw


def fuzz(stdins: list[bytes]) -> None:
    def one(stdin: bytes) -> tuple[bytes, list[str]]:
        return stdin, problems(run(ADD_ENV, stdin), {1, 6, 7})

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        failures = [(stdin, found) for stdin, found in pool.map(one, stdins) if found]
    assert not failures, "\n".join(f"{stdin[:120]!r}: {found}" for stdin, found in failures[:10])


def test_fuzz_random_bytes() -> None:
    rng = random.Random(20240601)
    fuzz([random_bytes(rng) for _ in range(200)])


def test_fuzz_random_json() -> None:
    rng = random.Random(20240602)
    docs = [random_document(rng) for _ in range(200)]
    for doc in docs:
        if isinstance(doc, dict):
            assert doc.get("name") in INVALID_NAMES or "name" not in doc
    fuzz([json.dumps(doc).encode() for doc in docs])
