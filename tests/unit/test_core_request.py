"""build_request: CNI_ARGS parsing and the precedence of requested IPs and MAC.

CONVENTIONS.md: runtimeConfig (capability args) wins over `args.cni`, which wins over
CNI_ARGS; the sources are not merged. CNI_ARGS follows `cni:pkg/types/args.go` LoadArgs:
`K=V;K=V`, keys case-sensitive, unknown keys refused unless IgnoreUnknown=1|true.
"""

from __future__ import annotations

from typing import Any

import pytest

from cni_bridge.cniargs import parse_cni_args
from cni_bridge.config.model import build_netconf
from cni_bridge.environment import read_invocation
from cni_bridge.errors import INVALID_CONFIG, INVALID_ENVIRONMENT, CniError
from cni_bridge.request import Request, build_request

pytestmark = pytest.mark.unit

VERSION = "1.0.0"


def make_request(cni_args: str = "", runtime: dict[str, Any] | None = None, args_cni: dict[str, Any] | None = None,
                 command: str = "ADD") -> Request:
    doc: dict[str, Any] = {"cniVersion": VERSION, "name": "net1", "type": "cni-bridge", "bridge": "cbt0"}
    if runtime is not None:
        doc["runtimeConfig"] = runtime
    if args_cni is not None:
        doc["args"] = {"cni": args_cni}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr-1", "CNI_NETNS": "/var/run/netns/cbt-does-not-exist",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    if cni_args:
        env["CNI_ARGS"] = cni_args
    return build_request(read_invocation(env), build_netconf(doc, VERSION))


def env_error(cni_args: str) -> CniError:
    with pytest.raises(CniError) as info:
        make_request(cni_args)
    assert info.value.code == INVALID_ENVIRONMENT == 4
    assert "CNI_ARGS" in info.value.msg
    return info.value


# ----------------------------------------------------------------- precedence of IPs

def test_no_source_requests_nothing() -> None:
    req = make_request()
    assert req.requested_ips == ()
    assert req.mac == ""


def test_runtime_config_ips_win_over_args_and_cni_args() -> None:
    req = make_request("IP=10.0.0.7", runtime={"ips": ["10.0.0.5"]}, args_cni={"ips": ["10.0.0.6"]})
    assert req.requested_ips == ("10.0.0.5",)


def test_args_ips_win_over_cni_args() -> None:
    req = make_request("IP=10.0.0.7", args_cni={"ips": ["10.0.0.6"]})
    assert req.requested_ips == ("10.0.0.6",)


def test_cni_args_ip_used_alone() -> None:
    assert make_request("IP=10.0.0.7").requested_ips == ("10.0.0.7",)


def test_sources_are_not_merged_across_families() -> None:
    # runtimeConfig asks only for IPv4; args' IPv6 and CNI_ARGS' IPv6 must not be added to it.
    req = make_request("IP=fd00::7", runtime={"ips": ["10.0.0.5"]}, args_cni={"ips": ["fd00::6"]})
    assert req.requested_ips == ("10.0.0.5",)
    req = make_request("IP=10.0.0.7,fd00::7", args_cni={"ips": ["fd00::6"]})
    assert req.requested_ips == ("fd00::6",)


def test_all_ips_of_the_winning_source_are_kept_in_order() -> None:
    req = make_request("IP=10.0.0.9", runtime={"ips": ["fd00::5", "10.0.0.5/24"]})
    assert req.requested_ips == ("fd00::5", "10.0.0.5")


def test_empty_runtime_ips_fall_through_to_args() -> None:
    req = make_request("IP=10.0.0.7", runtime={"ips": []}, args_cni={"ips": ["10.0.0.6"]})
    assert req.requested_ips == ("10.0.0.6",)


def test_ips_are_canonicalised() -> None:
    assert make_request(runtime={"ips": ["FD00:0::5/64"]}).requested_ips == ("fd00::5",)
    assert make_request(args_cni={"ips": ["fd00:0:0::6"]}).requested_ips == ("fd00::6",)
    assert make_request("IP=FD00::0007/64").requested_ips == ("fd00::7",)


@pytest.mark.parametrize(("runtime", "args_cni", "path"), [
    ({"ips": ["10.0.0.256"]}, None, "runtimeConfig.ips"),
    ({"ips": ["10.0.0.5", "::g"]}, None, "runtimeConfig.ips"),
    (None, {"ips": ["300.1.1.1"]}, "args.cni.ips"),
    ({"ips": ["10.0.0.5/99"]}, None, "runtimeConfig.ips"),
    (None, {"ips": ["fd00::6/200"]}, "args.cni.ips"),
], ids=["runtime-octet", "runtime-second-bad", "args-octet", "runtime-prefix-99", "args-prefix-200"])
def test_invalid_config_ips_are_config_errors(runtime: dict[str, Any] | None, args_cni: dict[str, Any] | None,
                                              path: str) -> None:
    with pytest.raises(CniError) as info:
        make_request(runtime=runtime, args_cni=args_cni)
    assert info.value.code == INVALID_CONFIG
    assert info.value.msg.startswith(path)


# ----------------------------------------------------------------- precedence of MAC

MAC_RT, MAC_ARGS, MAC_ENV = "0a:58:00:00:00:01", "0a:58:00:00:00:02", "0a:58:00:00:00:03"


def test_runtime_config_mac_wins() -> None:
    req = make_request(f"MAC={MAC_ENV}", runtime={"mac": MAC_RT}, args_cni={"mac": MAC_ARGS})
    assert req.mac == MAC_RT


def test_args_mac_wins_over_cni_args() -> None:
    assert make_request(f"MAC={MAC_ENV}", args_cni={"mac": MAC_ARGS}).mac == MAC_ARGS


def test_cni_args_mac_used_alone() -> None:
    assert make_request(f"MAC={MAC_ENV}").mac == MAC_ENV


def test_ip_and_mac_precedence_are_independent() -> None:
    # runtimeConfig gives only IPs; the MAC still comes from the next source that has one.
    req = make_request(f"MAC={MAC_ENV};IP=10.0.0.7", runtime={"ips": ["10.0.0.5"]}, args_cni={"mac": MAC_ARGS})
    assert req.requested_ips == ("10.0.0.5",)
    assert req.mac == MAC_ARGS


def test_macs_are_lower_cased() -> None:
    assert make_request(runtime={"mac": "0A:58:AB:CD:EF:01"}).mac == "0a:58:ab:cd:ef:01"
    assert make_request(args_cni={"mac": "0A:58:AB:CD:EF:02"}).mac == "0a:58:ab:cd:ef:02"
    assert make_request("MAC=0A:58:AB:CD:EF:03").mac == "0a:58:ab:cd:ef:03"


# ----------------------------------------------------------------- CNI_ARGS parsing

def test_comma_separated_ips() -> None:
    assert make_request("IP=10.0.0.7,fd00::7").requested_ips == ("10.0.0.7", "fd00::7")


def test_empty_ip_value_is_ignored_and_empty_items_are_invalid_pairs() -> None:
    assert make_request("IP=").requested_ips == ()
    assert make_request("").requested_ips == ()
    for raw in (";IP=10.0.0.7", "IP=10.0.0.7;", "IP=10.0.0.7;;IgnoreUnknown=1"):
        with pytest.raises(CniError) as info:  # libcni's LoadArgs: every item is one KEY=VALUE
            make_request(raw)
        assert info.value.code == INVALID_ENVIRONMENT and "invalid pair" in info.value.msg


@pytest.mark.parametrize("value", ["maybe", "yes", "2", ""])
def test_ignore_unknown_must_be_a_boolean(value: str) -> None:
    with pytest.raises(CniError) as info:
        make_request(f"IgnoreUnknown={value};FOO=bar")
    assert info.value.code == INVALID_ENVIRONMENT and "IgnoreUnknown" in info.value.msg


def test_ignore_unknown_lets_other_keys_through() -> None:
    assert make_request("IgnoreUnknown=1;FOO=bar;IP=10.0.0.7").requested_ips == ("10.0.0.7",)
    assert make_request("IgnoreUnknown=true;foo=bar").requested_ips == ()
    assert make_request("FOO=bar;IgnoreUnknown=1").requested_ips == (), "IgnoreUnknown counts wherever it is"


def test_kubelet_args_are_accepted_with_ignore_unknown() -> None:
    raw = ("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
           "K8S_POD_INFRA_CONTAINER_ID=0123456789abcdef;K8S_POD_UID=4f2c9c6e-1b2a-4c1e-9f5e-3a4b5c6d7e8f")
    req = make_request(raw)
    assert req.cni_args.pod_namespace == "default"
    assert req.cni_args.pod_name == "web-0"
    assert req.cni_args.pod_uid == "4f2c9c6e-1b2a-4c1e-9f5e-3a4b5c6d7e8f"
    assert req.requested_ips == ()


def test_unknown_keys_are_refused_and_listed() -> None:
    error = env_error("ip=10.0.0.7;FOO=bar;IP=10.0.0.8")
    assert "ip=10.0.0.7" in error.msg and "FOO=bar" in error.msg
    assert "IP=10.0.0.8" not in error.msg, "only unknown keys are listed"


def test_keys_are_case_sensitive() -> None:
    assert "mac=" in env_error(f"mac={MAC_ENV}").msg


@pytest.mark.parametrize("value", ["0", "false", "no", ""])
def test_ignore_unknown_false_values_still_refuse(value: str) -> None:
    env_error(f"IgnoreUnknown={value};FOO=bar")


@pytest.mark.parametrize("raw", ["IP", "IP=10.0.0.7;MAC", "A=B=C", "IP==10.0.0.7", "IgnoreUnknown=1;X"])
def test_invalid_pairs(raw: str) -> None:
    error = env_error(raw)
    assert "invalid pair" in error.msg


@pytest.mark.parametrize("raw", ["IP=10.0.0.256", "IP=10.0.0.7,bogus", "IP=fd00::g", "IP=/24"])
def test_invalid_ip_in_cni_args(raw: str) -> None:
    error = env_error(raw)
    assert "IP=" in error.msg


@pytest.mark.parametrize("mac", ["0a:58:00:00:00", "0a:58:00:00:00:0g", "0a-58-00:00-00-01", "0a:58:00:00:00:001",
                                 "0a580000000001", "0a:58:000:00:00:1", "zz:zz:zz:zz:zz:zz", "0a58.0000.00001",
                                 "0a:58:00:00:00:00:00:01"])
def test_invalid_mac_in_cni_args(mac: str) -> None:
    error = env_error(f"MAC={mac}")
    assert "MAC=" in error.msg


@pytest.mark.parametrize("mac", ["0A:58:00:00:00:01", "0a-58-00-00-00-01", "0a58.0000.0001"])
def test_mac_in_cni_args_in_every_form_go_reads(mac: str) -> None:
    assert make_request(f"MAC={mac}").mac == "0a:58:00:00:00:01"


@pytest.mark.parametrize("raw", ["IP=10.0.0.7/abc", "IP=10.0.0.7/33", "IP=fd00::7/129", "IP=10.0.0.7/24/1"])
def test_invalid_prefix_in_cni_args(raw: str) -> None:
    """IP=<ip>[/prefix]: the prefix is ignored for allocation, but a malformed one is still malformed."""
    error = env_error(raw)
    assert "IP=" in error.msg


def test_valid_prefix_in_cni_args_is_accepted_and_dropped() -> None:
    assert make_request("IP=10.0.0.7/24,fd00::7/64").requested_ips == ("10.0.0.7", "fd00::7")


def test_key_without_value_is_unknown_key() -> None:
    # "=" splits into two parts: an empty key, which is unknown (as in Go's LoadArgs).
    assert "unknown" in env_error("=").msg


def test_invalid_cni_args_refused_even_when_config_wins() -> None:
    # A malformed CNI_ARGS is an environment error whichever source wins.
    with pytest.raises(CniError) as info:
        make_request("IP=bogus", runtime={"ips": ["10.0.0.5"]})
    assert info.value.code == INVALID_ENVIRONMENT


def test_parse_cni_args_directly() -> None:
    args = parse_cni_args("IP=10.0.0.7,fd00::7;MAC=0a:58:00:00:00:03;K8S_POD_NAME=p")
    assert args.ips == ("10.0.0.7", "fd00::7")
    assert args.mac == "0a:58:00:00:00:03"
    assert args.pod_name == "p"


def test_request_carries_the_invocation() -> None:
    req = make_request()
    assert req.attachment == ("ctr-1", "eth0")
    assert req.invocation.netns == "/var/run/netns/cbt-does-not-exist"
    assert req.invocation.path == ("/opt/cni/bin",)
    assert req.conf.name == "net1"
