"""Keys read as Go's encoding/json reads them, and the config DEL falls back to."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cni_bridge.config.gojson import canonicalize, fold
from cni_bridge.config.load import load_for_delete, load_netconf
from cni_bridge.config.validate import load_schema
from cni_bridge.errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, CniError
from cni_bridge.log import Log

pytestmark = pytest.mark.unit

BASE: dict[str, Any] = {
    "cniVersion": "1.0.0", "name": "gonet", "type": "cni-bridge",
    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]]},
}


def conf(**overlay: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc.update(overlay)
    return doc


def error_of(doc: dict[str, Any], command: str = "ADD") -> CniError:
    with pytest.raises(CniError) as info:
        load_netconf(doc, command)
    return info.value


# ---------------------------------------------------------------- the folding rule

@pytest.mark.parametrize(("written", "field", "matches"), [
    ("HostPort", "hostPort", True),
    ("HOSTPORT", "hostPort", True),
    ("hostport", "hostPort", True),
    ("host_port", "hostPort", False),
    ("hostPort ", "hostPort", False),
    ("\u212aey", "key", True),      # Kelvin sign: Go 1.19's equalFoldRight folds it to k
    ("\u017fubnet", "subnet", True),  # long s folds to s
    ("\u0130pam", "ipam", False),     # dotted capital I is not ASCII i for Go 1.19
    ("ipam\u200b", "ipam", False),
])
def test_fold_matches_go(written: str, field: str, matches: bool) -> None:
    assert (fold(written) == fold(field)) is matches


def test_containerd_port_mappings_are_read() -> None:
    doc = conf(runtimeConfig={"portMappings": [
        {"HostPort": 18288, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}]})
    mapping = load_netconf(doc, "ADD").port_mappings[0]
    assert (mapping.host_port, mapping.container_port, mapping.protocol, mapping.host_ip) == (18288, 80, "tcp", "")


def test_every_level_folds() -> None:
    doc = {"CNIVERSION": "1.0.0", "Name": "gonet", "Type": "cni-bridge", "IsGateway": True, "MTU": 1400,
           "IPAM": {"TYPE": "host-local", "RANGES": [[{"SUBNET": "10.77.0.0/24", "Gateway": "10.77.0.1"}]],
                    "Routes": [{"DST": "0.0.0.0/0"}]},
           "DNS": {"NameServers": ["198.51.100.53"]},
           "Args": {"CNI": {"IPs": ["10.77.0.9"], "MAC": "0a:58:0a:4d:00:09"}}}
    netconf = load_netconf(doc, "ADD")
    assert netconf.cni_version == "1.0.0" and netconf.name == "gonet" and netconf.is_gateway and netconf.mtu == 1400
    assert netconf.ipam is not None and str(netconf.ipam.range_sets[0].ranges[0].subnet) == "10.77.0.0/24"
    assert netconf.ipam.routes[0].dst == "0.0.0.0/0"
    assert netconf.dns is not None and netconf.dns.nameservers == ["198.51.100.53"]
    assert netconf.args_ips == ("10.77.0.9",) and netconf.args_mac == "0a:58:0a:4d:00:09"


def test_exact_match_wins_then_the_last_key() -> None:
    schema = load_schema()
    doc, _ = canonicalize({"name": "exact", "NAME": "folded", "type": "t"}, schema)
    assert doc["name"] == "folded"  # both map to name: the later key's value stays, as in Go
    doc, _ = canonicalize({"runtimeConfig": {"portMappings": [{"HostPort": 2, "hostPort": 1}]}}, schema)
    assert doc["runtimeConfig"]["portMappings"][0] == {"hostPort": 1}


def test_capabilities_is_a_map_whose_keys_are_data() -> None:
    doc, _ = canonicalize({"capabilities": {"PortMappings": True, "portMappings": False}}, load_schema())
    assert doc["capabilities"] == {"PortMappings": True, "portMappings": False}


def test_null_is_absent_and_never_overrides() -> None:
    netconf = load_netconf(conf(bridge=None, mtu=None, ipMasq=None, dns=None, runtimeConfig=None), "ADD")
    assert netconf.bridge == "cnibr0" and netconf.mtu is None and not netconf.ip_masq and netconf.dns is None
    assert load_netconf(conf(mtu=1400, MTU=None), "ADD").mtu == 1400


def test_unknown_keys_are_ignored_at_every_level() -> None:
    doc = conf(futureKey={"x": 1}, dns={"nameservers": ["198.51.100.53"], "sortlist": []},
               runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "range": 1}]})
    doc["ipam"]["ranges"][0][0]["comment"] = "kept by Go, ignored"
    doc["ipam"]["routes"] = [{"dst": "0.0.0.0/0", "label": "x"}]
    netconf = load_netconf(doc, "ADD")
    assert netconf.port_mappings[0].host_port == 8080


def test_schema_errors_name_the_key_as_written() -> None:
    error = error_of(conf(runtimeConfig={"portMappings": [{"HostPort": "x", "ContainerPort": 80}]}))
    assert error.code == INVALID_CONFIG and error.msg.startswith("runtimeConfig.portMappings[0].HostPort:"), error
    error = error_of(conf(IPAM={"Type": "host-local", "Ranges": [[{"Subnet": 5}]]}, ipam=None))
    assert error.msg.startswith("IPAM.Ranges[0][0].Subnet:"), error


def test_semantic_errors_name_the_key_as_written() -> None:
    error = error_of(conf(IPAM={"Type": "host-local", "Ranges": [[{"Subnet": "10.9.0.0/24", "RangeStart": "10.8.0.1"}]]},
                          ipam=None))
    assert error.msg.startswith("IPAM.Ranges[0][0].RangeStart:"), error


def test_prev_result_keys_fold() -> None:
    prev = {"CNIVersion": "1.0.0", "Interfaces": [{"Name": "eth0", "Sandbox": "/run/netns/x"}],
            "IPs": [{"Address": "10.77.0.5/24", "Interface": 0, "Gateway": "10.77.0.1"}],
            "Routes": [{"Dst": "0.0.0.0/0"}]}
    result = load_netconf(conf(prevResult=prev), "ADD").prev_result
    assert result is not None and result.ips[0].address == "10.77.0.5/24" and result.interfaces[0].name == "eth0"
    assert result.routes[0].dst == "0.0.0.0/0"


def test_lone_surrogate_is_a_config_error_with_its_path() -> None:
    error = error_of(conf(bridge="br\ud800"))
    assert error.code == INVALID_CONFIG and error.msg.startswith("bridge:"), error


def test_bridge_name_longer_than_15_bytes_is_a_config_error() -> None:
    error = error_of(conf(bridge="é" * 8))
    assert error.code == INVALID_CONFIG and error.msg.startswith("bridge:"), error


# ---------------------------------------------------------------- DEL's fallback

@pytest.mark.parametrize("broken", [
    {"internal": True, "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}},
    {"internal": True, "ipMasq": True},
    {"cniVersion": "9.9.9"},
    {"mtu": "1500"},
    {"bridge": "no/such/bridge"},
    {"ipam": {"type": "host-local", "dataDir": "/srv/store", "ranges": [[{"subnet": "10.77.0.0/24"}],
                                                                        [{"subnet": "10.77.0.0/25"}]]}},
    {"ipam": {"type": "host-local", "dataDir": "/srv/store", "ranges": "garbage"}},
    {"prevResult": {"ips": [{"address": "not-an-ip"}]}},
    {"stateDir": "/srv/state", "ipMasqBackend": "firewalld"},
    {"bridge": "br\ud800", "stateDir": "/srv/state"},
], ids=["internal-ports", "internal-masq", "version", "mtu-type", "bridge-slash", "overlap", "ranges-garbage",
        "prev-result", "backend", "surrogate"])
def test_delete_falls_back_to_the_attachment_identity(broken: dict[str, Any]) -> None:
    doc = conf(**broken)
    with pytest.raises(CniError):
        load_netconf(doc, "ADD")
    netconf = load_for_delete(doc, Log(level="error"))
    assert netconf.name == "gonet"
    assert netconf.ipam is not None and netconf.ipam.type == "host-local"
    assert netconf.ipam.data_dir == broken.get("ipam", {}).get("dataDir", "/var/lib/cni/networks")
    assert netconf.state_dir == broken.get("stateDir", "/run/cni-bridge")
    assert netconf.raw is doc  # a delegated IPAM plugin gets the document as it came


def test_delete_keeps_only_valid_keys() -> None:
    netconf = load_for_delete(conf(stateDir="relative", internal=True, ipMasq=True,
                                   ipam={"type": "../evil", "dataDir": "/srv/x"}), Log(level="error"))
    assert netconf.state_dir == "/run/cni-bridge" and netconf.ipam is None


def test_delete_of_a_valid_config_is_the_full_config() -> None:
    assert load_for_delete(conf(mtu=1400), Log(level="error")) == load_netconf(conf(mtu=1400), "DEL")


@pytest.mark.parametrize("name", [None, 5, "", "a/b", "../x", "x" * 201, "n\ud800"])
def test_delete_needs_a_usable_name(name: Any) -> None:
    doc = conf(name=name) if name is not None else {k: v for k, v in BASE.items() if k != "name"}
    with pytest.raises(CniError) as info:
        load_for_delete(doc, Log(level="error"))
    assert info.value.code == INVALID_CONFIG and info.value.msg.startswith("name:")


def test_delete_reads_a_folded_name() -> None:
    doc = {k: v for k, v in BASE.items() if k != "name"}
    assert load_for_delete({**doc, "NAME": "gonet", "internal": True, "ipMasq": True}, Log(level="error")).name == "gonet"


def test_other_commands_still_refuse_an_unknown_version() -> None:
    assert error_of(conf(cniVersion="9.9.9"), "CHECK").code == INCOMPATIBLE_VERSION


@pytest.mark.parametrize(("text", "path"), [
    ('"mtu": 1500.0', "mtu"),
    ('"mtu": 1.5e3', "mtu"),
    ('"runtimeConfig": {"portMappings": [{"hostPort": 8080.0, "containerPort": 80}]}',
     "runtimeConfig.portMappings[0].hostPort"),
])
def test_numbers_with_a_fraction_are_not_integers(text: str, path: str) -> None:
    # Go will not decode 1500.0 into an int; JSON Schema alone would call it one.
    from cni_bridge.main import _decode
    doc = _decode(('{"cniVersion": "1.0.0", "name": "gonet", "type": "cni-bridge", ' + text + "}").encode())
    error = error_of(doc)
    assert error.code == INVALID_CONFIG and error.msg.startswith(path + ":"), error


def decoded(text: str) -> dict[str, Any]:
    from cni_bridge.main import _decode
    return _decode(text.encode())


def test_a_repeated_object_merges_into_the_earlier_one() -> None:
    doc = decoded('{"cniVersion": "1.0.0", "name": "gonet", "type": "cni-bridge",'
                  ' "ipam": {"type": "host-local"}, "IPAM": {"ranges": [[{"subnet": "10.77.0.0/24"}]]}}')
    netconf = load_netconf(doc, "ADD")
    assert netconf.ipam is not None and netconf.ipam.type == "host-local" and len(netconf.ipam.range_sets) == 1


def test_a_repeated_array_decodes_into_the_earlier_elements() -> None:
    doc = decoded('{"cniVersion": "1.0.0", "name": "gonet", "type": "cni-bridge", "runtimeConfig": {'
                  '"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "udp"}, {"hostPort": 3, "containerPort": 4}],'
                  '"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}')
    mappings = load_netconf(doc, "ADD").port_mappings
    assert [(m.host_port, m.container_port, m.protocol) for m in mappings] == [(8080, 80, "udp")]


def test_null_clears_a_list_or_object_but_not_a_scalar() -> None:
    doc = decoded('{"cniVersion": "1.0.0", "name": "gonet", "type": "cni-bridge", "mtu": 1400, "MTU": null,'
                  ' "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}], "PortMappings": null}}')
    netconf = load_netconf(doc, "ADD")
    assert netconf.mtu == 1400 and netconf.port_mappings == ()


def test_repeated_exact_keys_keep_the_last_scalar() -> None:
    assert load_netconf(decoded('{"cniVersion": "1.0.0", "name": "a", "name": "b", "type": "t"}'), "ADD").name == "b"


@pytest.mark.parametrize("overlay", [
    {"cniVersion": ""},
    {"ipam": {"type": "", "ranges": [[{"subnet": "10.77.0.0/24"}]]}},
    {"runtimeConfig": {"mac": "", "ipRanges": [[{"Subnet": "10.78.0.0/24", "RangeStart": "", "RangeEnd": "",
                                                 "Gateway": ""}]]}},
    {"args": {"cni": {"mac": ""}}},
    {"ipam": {"type": "host-local", "dataDir": "", "resolvConf": "", "routes": [{"dst": "0.0.0.0/0", "gw": ""}],
              "ranges": [[{"subnet": "10.77.0.0/24", "gateway": ""}]]}},
], ids=["cniVersion", "ipam-type", "containerd-ip-ranges", "args-mac", "ipam-strings"])
def test_an_empty_string_is_unset_where_go_reads_a_zero_value(overlay: dict[str, Any]) -> None:
    netconf = load_netconf(conf(**overlay), "ADD")
    assert netconf.runtime_mac == "" and netconf.args_mac == ""


def test_the_empty_cni_version_is_the_implicit_one() -> None:
    assert load_netconf(conf(cniVersion=""), "ADD").cni_version == "0.1.0"


@pytest.mark.parametrize(("mtu", "expected"), [(0, None), (-5, None), (68, 68), (9000, 9000)])
def test_mtu_zero_or_less_is_the_default(mtu: int, expected: int | None) -> None:
    assert load_netconf(conf(mtu=mtu), "ADD").mtu == expected


def test_mtu_below_68_is_refused() -> None:
    assert error_of(conf(mtu=67)).msg.startswith("mtu:")


@pytest.mark.parametrize("protocol", ["Udp", "uDP", "SCTP", "tcp"])
def test_protocol_in_any_case(protocol: str) -> None:
    mapping = load_netconf(conf(runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": protocol}]}), "ADD").port_mappings[0]
    assert mapping.protocol == protocol.lower()


def test_dns_nameservers_pass_through_unchecked() -> None:
    netconf = load_netconf(conf(dns={"nameservers": ["not-an-address"]}), "ADD")
    assert netconf.dns is not None and netconf.dns.nameservers == ["not-an-address"]
