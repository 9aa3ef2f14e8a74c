"""The config schema: the fast checker agrees with jsonschema, and rejections name the JSON path.

(a) SchemaChecker.is_valid(doc) == Draft202012Validator(schema).is_valid(doc) on hand-written
    configs, every spec fixture config, and systematic mutations of a document that uses every
    property of the schema (each node replaced by a value of each JSON type, string nodes by
    pattern probes, each key deleted, an unknown key added to each object);
(b) the schema uses only the keywords the fast checker implements;
(c) the shipped conflist's plugin objects are valid;
(d) validate_document reports code 7 with the JSON path of the offending value.
"""

from __future__ import annotations

import copy
import glob
import json
import os
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest

from cni_bridge.config.model import build_netconf
from cni_bridge.config.schema_check import SUPPORTED_KEYWORDS, SchemaChecker
from cni_bridge.config.validate import json_path, load_schema, schema_path, validate_document
from cni_bridge.errors import INVALID_CONFIG, CniError

pytestmark = pytest.mark.unit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEMA = load_schema()
FAST = SchemaChecker(SCHEMA)
SLOW = jsonschema.Draft202012Validator(SCHEMA)

Path = tuple[str | int, ...]


def jsonschema_valid(doc: Any) -> bool:
    return bool(SLOW.is_valid(doc))


# ----------------------------------------------------------------- a document using every property

RANGE = {"subnet": "10.1.0.0/16", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.200", "gateway": "10.1.0.1"}
RANGE6 = {"subnet": "fd00:1::/64", "rangeStart": "fd00:1::10", "rangeEnd": "fd00:1::ff", "gateway": "fd00:1::1"}
ROUTE = {"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 254, "scope": 0}
ATTACHMENT = {"containerID": "ctr-1", "ifname": "eth0"}

BASE: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "name": "net1",
    "type": "cni-bridge",
    "bridge": "cbt0",
    "isGateway": True,
    "isDefaultGateway": False,
    "forceAddress": False,
    "ipMasq": True,
    "ipMasqBackend": "iptables",
    "backend": "iptables",
    "firewallBackend": "iptables",
    "warmHelper": False,
    "mtu": 1500,
    "hairpinMode": False,
    "promiscMode": False,
    "vlan": 0,
    "enabledad": False,
    "macspoofchk": False,
    "portIsolation": False,
    "dns": {"nameservers": ["10.1.0.1", "fd00:1::1"], "domain": "cluster.local", "search": ["svc.cluster.local"],
            "options": ["ndots:5"]},
    "ipam": {
        "type": "host-local",
        "ranges": [[RANGE], [RANGE6]],
        "subnet": "10.2.0.0/24",
        "rangeStart": "10.2.0.10",
        "rangeEnd": "10.2.0.20",
        "gateway": "10.2.0.1",
        "routes": [ROUTE, {"dst": "::/0"}],
        "dataDir": "/var/lib/cni/networks",
        "resolvConf": "/etc/resolv.conf",
    },
    "snat": True,
    "markMasqBit": 13,
    "externalSetMarkChain": "KUBE-MARK-MASQ",
    "masqAll": False,
    "ipMasqExclude": ["10.244.0.0/16"],
    "isolate": False,
    "internal": False,
    "stateDir": "/run/cni-bridge",
    "logFile": "/var/log/cni-bridge.log",
    "logLevel": "info",
    "capabilities": {"portMappings": True, "ips": False},
    "runtimeConfig": {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}],
        "ips": ["10.1.0.50/16", "fd00:1::50"],
        "mac": "0a:58:0a:01:00:32",
        "ipRanges": [[RANGE]],
    },
    "args": {"cni": {"ips": ["10.1.0.51"], "mac": "0a:58:0a:01:00:33"}},
    "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.50/16"}]},
    "cni.dev/valid-attachments": [ATTACHMENT],
    "cni.dev/attachments": [ATTACHMENT],
}


def walk(node: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, path + (i,))


def replace(doc: Any, path: Path, value: Any) -> Any:
    if not path:
        return copy.deepcopy(value)
    out = copy.deepcopy(doc)
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = copy.deepcopy(value)
    return out


def delete(doc: Any, path: Path) -> Any:
    out = copy.deepcopy(doc)
    node = out
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return out


def label(path: Path) -> str:
    return json_path(path) or "(root)"


TYPE_PROBES: list[tuple[str, Any]] = [
    ("null", None), ("true", True), ("false", False), ("0", 0), ("-1", -1), ("1", 1), ("1.0", 1.0), ("1.5", 1.5),
    ("70000", 70000), ("2^70", 2 ** 70), ("empty-str", ""), ("x*300", "x" * 300), ("empty-list", []),
    ("empty-obj", {}), ("list-a", ["a"]), ("list-obj", [{}]), ("list-list", [["a"]]),
    ("nested", {"a": {"b": [1, None, "c"]}}),
]
STRING_PROBES: list[tuple[str, str]] = [
    ("x", "x"), ("dotdot", ".."), ("dot", "."), ("slash", "a/b"), ("colon", "a:b"), ("space", "a b"),
    ("tab", "a\tb"), ("trailing-newline", "abc\n"), ("leading-dash", "-abc"), ("16-chars", "abcdefghijklmnop"),
    ("15-chars", "abcdefghijklmno"), ("utf8", "é"), ("ipv4", "10.9.8.7"), ("cidr", "10.9.8.0/24"),
    ("ipv6", "fd00::9"), ("mac", "0a:58:00:00:00:09"), ("mac-newline", "0a:58:00:00:00:09\n"),
    ("abs-path", "/x"), ("chain-29", "C" * 29), ("x*201", "x" * 201), ("tcp", "tcp"), ("UDP", "UDP"),
    ("debug", "debug"), ("icmp", "icmp"),
]


def mutation_cases() -> list[Any]:
    cases: list[Any] = []
    nodes = list(walk(BASE))
    for path, node in nodes:
        for name, value in TYPE_PROBES:
            cases.append(pytest.param(replace(BASE, path, value), id=f"{label(path)}={name}"))
        if isinstance(node, str):
            for name, value in STRING_PROBES:
                cases.append(pytest.param(replace(BASE, path, value), id=f"{label(path)}=str:{name}"))
        if isinstance(node, dict):
            for key in node:
                cases.append(pytest.param(delete(BASE, path + (key,)), id=f"{label(path + (key,))}:deleted"))
            extra = copy.deepcopy(node)
            extra["zzUnknownKey"] = 1
            cases.append(pytest.param(replace(BASE, path, extra), id=f"{label(path)}:unknown-key"))
        if isinstance(node, list) and node:
            cases.append(pytest.param(replace(BASE, path, node + node), id=f"{label(path)}:doubled"))
    # The same probes on a minimal document, where a mutation is the only thing present.
    minimal = {"name": "n", "type": "cni-bridge"}
    for prop in SCHEMA["properties"]:
        for name, value in TYPE_PROBES + [(f"str:{n}", v) for n, v in STRING_PROBES]:
            doc = dict(minimal)
            doc[prop] = value
            cases.append(pytest.param(doc, id=f"minimal:{prop}={name}"))
    return cases


MUTATIONS = mutation_cases()


def plugin(**keys: Any) -> dict[str, Any]:
    """A minimal valid plugin object plus `keys`."""
    return {"name": "n", "type": "cni-bridge", **keys}


def port(**keys: Any) -> dict[str, Any]:
    return plugin(runtimeConfig={"portMappings": [{"hostPort": 1, "containerPort": 1, **keys}]})


HAND_WRITTEN: list[tuple[str, Any]] = [
    ("minimal", plugin()),
    ("name-only", {"name": "n"}),
    ("typical", plugin(cniVersion="1.0.0", name="mynet", bridge="cni0", isGateway=True, ipMasq=True,
                       ipam={"type": "host-local", "subnet": "10.22.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]})),
    ("l2-only", plugin(cniVersion="1.0.0", ipam={})),
    ("delegated-ipam-extra-keys", plugin(ipam={"type": "dhcp", "daemonSocketPath": "/run/dhcp.sock"})),
    ("unknown-top-level-keys", plugin(foo=1, bar={"baz": []})),
    ("runtime-extra-capabilities", plugin(runtimeConfig={"bandwidth": {"ingressRate": 1}})),
    ("args-extra-keys", plugin(args={"cni": {"labels": [{"key": "a", "value": "b"}]}, "k8s": {}})),
    ("gc", plugin(cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})),
    ("not-object", ["name"]),
    ("null", None),
    ("string", "name"),
    ("empty", {}),
    ("no-name", {"type": "cni-bridge"}),
    ("name-number", plugin(name=1)),
    ("name-slash", plugin(name="a/b")),
    ("name-dotdot", plugin(name="../x")),
    ("name-too-long", plugin(name="n" * 201)),
    ("name-max", plugin(name="n" * 200)),
    ("type-empty", plugin(type="")),
    ("bridge-16", plugin(bridge="b" * 16)),
    ("bridge-15", plugin(bridge="b" * 15)),
    ("bridge-dot", plugin(bridge=".")),
    ("bridge-dots3", plugin(bridge="...")),
    ("mtu-67", plugin(mtu=67)),
    ("mtu-68", plugin(mtu=68)),
    ("mtu-65535", plugin(mtu=65535)),
    ("mtu-65536", plugin(mtu=65536)),
    ("mtu-float-int", plugin(mtu=1500.0)),
    ("mtu-bool", plugin(mtu=True)),
    ("vlan-4094", plugin(vlan=4094)),
    ("vlan-4095", plugin(vlan=4095)),
    ("markMasqBit-31", plugin(markMasqBit=31)),
    ("markMasqBit-32", plugin(markMasqBit=32)),
    ("logLevel-bad", plugin(logLevel="verbose")),
    ("logLevel-true", plugin(logLevel=True)),
    ("logFile-relative", plugin(logFile="x.log")),
    ("capabilities-non-bool", plugin(capabilities={"portMappings": 1})),
    ("protocol-empty", port(protocol="")),
    ("protocol-icmp", port(protocol="icmp")),
    ("protocol-Tcp", port(protocol="Tcp")),
    ("hostPort-0", port(hostPort=0)),
    ("hostPort-float", port(hostPort=80.0)),
    ("hostPort-missing", plugin(runtimeConfig={"portMappings": [{"containerPort": 1}]})),
    ("range-set-empty", plugin(ipam={"type": "host-local", "ranges": [[]]})),
    ("range-not-list-of-lists", plugin(ipam={"type": "host-local", "ranges": [{"subnet": "10.0.0.0/24"}]})),
    ("range-extra-key", plugin(ipam={"ranges": [[{"subnet": "10.0.0.0/24", "foo": 1}]]})),
    ("route-scope-256", plugin(ipam={"routes": [{"dst": "0.0.0.0/0", "scope": 256}]})),
    ("route-extra-key", plugin(ipam={"routes": [{"dst": "0.0.0.0/0", "via": "x"}]})),
    ("attachments-not-list", plugin(**{"cni.dev/valid-attachments": {}})),
    ("attachment-missing-ifname", plugin(**{"cni.dev/valid-attachments": [{"containerID": "c"}]})),
    ("attachment-not-object", plugin(**{"cni.dev/attachments": ["c"]})),
    ("dns-extra-key", plugin(dns={"servers": ["1.1.1.1"]})),
    ("nan-mtu", plugin(mtu=float("nan"))),
    ("inf-mtu", plugin(mtu=float("inf"))),
    ("prevResult-list", plugin(prevResult=[])),
]


def fixture_docs() -> list[Any]:
    cases = []
    for path in sorted(glob.glob(os.path.join(ROOT, "spec-fixtures", "*", "*.json"))):
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        for key in ("config", "stdin"):
            doc = data.get(key) if isinstance(data, dict) else None
            if isinstance(doc, dict):
                rel = os.path.relpath(path, ROOT)
                cases.append(pytest.param(doc, id=f"{rel}:{key}"))
    return cases


@pytest.mark.parametrize("doc", [pytest.param(d, id=i) for i, d in HAND_WRITTEN])
def test_fast_agrees_with_jsonschema_hand_written(doc: Any) -> None:
    assert FAST.is_valid(doc) == jsonschema_valid(doc)


@pytest.mark.parametrize("doc", fixture_docs())
def test_fast_agrees_with_jsonschema_on_spec_fixtures(doc: Any) -> None:
    assert FAST.is_valid(doc) == jsonschema_valid(doc)


@pytest.mark.parametrize("doc", MUTATIONS)
def test_fast_agrees_with_jsonschema_on_mutations(doc: Any) -> None:
    assert FAST.is_valid(doc) == jsonschema_valid(doc)


def test_base_document_is_valid() -> None:
    assert jsonschema_valid(BASE)
    assert FAST.is_valid(BASE)
    validate_document(copy.deepcopy(BASE))


def test_mutations_cover_both_verdicts() -> None:
    verdicts = [jsonschema_valid(p.values[0]) for p in MUTATIONS]
    assert len(verdicts) > 1000
    assert verdicts.count(True) > 100 and verdicts.count(False) > 500


def test_every_schema_property_is_in_the_base_document() -> None:
    """Mutations only exercise what BASE contains: keep it in step with the schema."""
    def props(schema: dict[str, Any]) -> set[str]:
        return set(schema.get("properties", {}))

    assert props(SCHEMA) == set(BASE)
    defs = SCHEMA["$defs"]
    assert props(defs["ipam"]) == set(BASE["ipam"])
    assert props(defs["range"]) == set(RANGE)
    assert props(defs["route"]) == set(ROUTE)
    assert props(defs["dns"]) == set(BASE["dns"])
    assert props(defs["runtimeConfig"]) == set(BASE["runtimeConfig"])
    assert props(defs["portMapping"]) == set(BASE["runtimeConfig"]["portMappings"][0])
    assert props(defs["args"]["properties"]["cni"]) == set(BASE["args"]["cni"])
    assert props(defs["attachments"]["items"]) == set(ATTACHMENT)


# ----------------------------------------------------------------- (b) keywords

def schema_nodes(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every subschema, keyed by its location; names under properties/$defs are not keywords."""
    if not isinstance(node, dict):
        return
    yield where, node
    for keyword, value in node.items():
        if keyword in ("properties", "$defs"):
            for name, sub in value.items():
                yield from schema_nodes(sub, f"{where}/{keyword}/{name}")
        elif keyword in ("items", "not", "additionalProperties"):
            yield from schema_nodes(value, f"{where}/{keyword}")


def test_schema_uses_only_supported_keywords() -> None:
    unsupported = {f"{where}: {kw}" for where, node in schema_nodes(SCHEMA) for kw in node
                   if kw not in SUPPORTED_KEYWORDS}
    assert not unsupported


def test_schema_refs_resolve() -> None:
    for where, node in schema_nodes(SCHEMA):
        ref = node.get("$ref")
        if ref is not None:
            assert ref.startswith("#/$defs/"), where
            assert ref.split("/")[-1] in SCHEMA["$defs"], where


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_file_is_where_validate_looks() -> None:
    assert os.path.samefile(schema_path(), os.path.join(ROOT, "conf", "cni-bridge.schema.json"))


# ----------------------------------------------------------------- (c) shipped conflist

CONFLIST = os.path.join(ROOT, "conf", "10-cni-bridge.conflist")


def test_shipped_conflist_plugins_are_valid() -> None:
    if not os.path.exists(CONFLIST):
        pytest.skip("conf/10-cni-bridge.conflist does not exist")
    with open(CONFLIST, encoding="utf-8") as handle:
        conflist = json.load(handle)
    assert isinstance(conflist.get("plugins"), list) and conflist["plugins"]
    for i, plugin in enumerate(conflist["plugins"]):
        doc = {**plugin, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        if plugin.get("type") != "cni-bridge":
            continue
        assert jsonschema_valid(doc), f"plugins[{i}]"
        assert FAST.is_valid(doc), f"plugins[{i}]"
        validate_document(doc)
        build_netconf(doc, doc["cniVersion"])  # and the semantic checks accept it too


# ----------------------------------------------------------------- (d) error messages

def config_error(doc: Any) -> CniError:
    with pytest.raises(CniError) as info:
        validate_document(doc)
    assert info.value.code == INVALID_CONFIG == 7
    return info.value


PATH_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("range-subnet-type", {"ipam": {"type": "host-local", "ranges": [[{"subnet": 5}]]}}, "ipam.ranges[0][0].subnet"),
    ("range-subnet-second-set", {"ipam": {"type": "host-local", "ranges": [[RANGE], [RANGE6, {"subnet": None}]]}},
     "ipam.ranges[1][1].subnet"),
    ("isGateway-string", {"isGateway": "yes"}, "isGateway"),
    ("hostPort-zero", {"runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}},
     "runtimeConfig.portMappings[0].hostPort"),
    ("hostPort-too-large", {"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80},
                                                               {"hostPort": 65536, "containerPort": 80}]}},
     "runtimeConfig.portMappings[1].hostPort"),
    ("vlan", {"vlan": 5000}, "vlan"),
    ("mtu", {"mtu": 65536}, "mtu"),
    ("bridge-slash", {"bridge": "br/0"}, "bridge"),
    ("bridge-too-long", {"bridge": "b" * 16}, "bridge"),
    ("name-bad-chars", {"name": "../x"}, "name"),
    ("nameserver", {"dns": {"nameservers": ["10.0.0.1", 5]}}, "dns.nameservers[1]"),
    ("route-dst-type", {"ipam": {"routes": [{"dst": 0}]}}, "ipam.routes[0].dst"),
    ("route-scope", {"ipam": {"routes": [{"dst": "0.0.0.0/0", "scope": 300}]}}, "ipam.routes[0].scope"),
    ("runtime-mac", {"runtimeConfig": {"mac": "0a:58:00:00:00"}}, "runtimeConfig.mac"),
    ("runtime-ips", {"runtimeConfig": {"ips": ["10.0.0.5", "not-an-ip"]}}, "runtimeConfig.ips[1]"),
    ("args-mac", {"args": {"cni": {"mac": 5}}}, "args.cni.mac"),
    ("attachment-ifname", {"cni.dev/valid-attachments": [{"containerID": "c", "ifname": 1}]},
     "cni.dev/valid-attachments[0].ifname"),
    ("logLevel", {"logLevel": "trace"}, "logLevel"),
    ("capabilities", {"capabilities": {"portMappings": "yes"}}, "capabilities.portMappings"),
    ("prevResult-type", {"prevResult": []}, "prevResult"),
    ("ipRanges", {"runtimeConfig": {"ipRanges": [[{"rangeStart": "10.0.0.1"}]]}},
     "runtimeConfig.ipRanges[0][0].subnet"),
]


@pytest.mark.parametrize(("overlay", "path"), [c[1:] for c in PATH_CASES], ids=[c[0] for c in PATH_CASES])
def test_validate_document_names_the_path(overlay: dict[str, Any], path: str) -> None:
    doc = {"cniVersion": "1.0.0", "name": "net1", "type": "cni-bridge", **overlay}
    error = config_error(doc)
    assert error.msg.startswith(path + ":"), error.msg


@pytest.mark.parametrize(("doc", "path"), [
    ({"cniVersion": "1.0.0", "type": "cni-bridge"}, "name"),
    (plugin(runtimeConfig={"portMappings": [{"hostPort": 80}]}), "runtimeConfig.portMappings[0].containerPort"),
    (plugin(ipam={"routes": [{"gw": "10.0.0.1"}]}), "ipam.routes[0].dst"),
    ({"name": "n"}, "type"),
], ids=["name", "containerPort", "route-dst", "type"])
def test_missing_required_key_is_named(doc: dict[str, Any], path: str) -> None:
    error = config_error(doc)
    assert path in error.msg


@pytest.mark.parametrize("doc", [[], "x", 5, None], ids=["list", "string", "number", "null"])
def test_validate_document_non_object(doc: Any) -> None:
    config_error(doc)


def test_validate_document_accepts_valid() -> None:
    validate_document({"cniVersion": "1.0.0", "name": "net1", "type": "cni-bridge", "ipam": {}})


# Python's `$` also matches before a trailing newline, and both the fast checker and
# jsonschema use Python's re.search; an ECMA-262 validator (what JSON Schema specifies)
# rejects these. A network name or chain name with a newline ends up in file names and in
# iptables-restore input.
NEWLINE_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("name", {"name": "net1\n"}, "name"),
    ("bridge", {"bridge": "cbt0\n"}, "bridge"),
    ("externalSetMarkChain", {"externalSetMarkChain": "KUBE-MARK-MASQ\n"}, "externalSetMarkChain"),
    ("runtimeConfig.mac", {"runtimeConfig": {"mac": "0a:58:00:00:00:01\n"}}, "runtimeConfig.mac"),
    ("args.cni.mac", {"args": {"cni": {"mac": "0a:58:00:00:00:01\n"}}}, "args.cni.mac"),
    ("ipam.type", {"ipam": {"type": "host-local\n"}}, "ipam.type"),
]


@pytest.mark.parametrize(("overlay", "path"), [c[1:] for c in NEWLINE_CASES], ids=[c[0] for c in NEWLINE_CASES])
def test_patterns_reject_a_trailing_newline(overlay: dict[str, Any], path: str) -> None:
    doc = {"cniVersion": "1.0.0", "name": "net1", "type": "cni-bridge", **overlay}
    error = config_error(doc)
    assert error.msg.startswith(path + ":"), error.msg


# Python-only regex syntax. JSON Schema patterns are ECMA-262: there `\Z` is an error (with
# the u flag) or a literal "Z", so a standard validator (ajv, ...) given the shipped schema
# would refuse every name. Anchor with `$(?!\n)` instead: the same in Python and ECMA-262.
PYTHON_ONLY_REGEX = ["\\Z", "\\A", "\\z", "(?P<", "(?P=", "(?#", "(?i", "(?s", "(?m", "(?x", "(?a", "(?L", "(?u"]


def test_patterns_are_ecma_262_portable() -> None:
    found = [(where, node["pattern"], bad) for where, node in schema_nodes(SCHEMA) if "pattern" in node
             for bad in PYTHON_ONLY_REGEX if bad in node["pattern"]]
    assert not found


def test_json_path_formatting() -> None:
    assert json_path(["ipam", "ranges", 0, 0, "subnet"]) == "ipam.ranges[0][0].subnet"
    assert json_path([]) == ""
    assert json_path(["cni.dev/valid-attachments", 2, "ifname"]) == "cni.dev/valid-attachments[2].ifname"
