"""The runner's pure logic: network lists from a directory, the result cache, argument parsing,
and the per-plugin config the runner builds (capabilities, name, cniVersion, prevResult).

The last section drives ListRunner with a tiny fake plugin (a Python script that records its
stdin and CNI_* variables), so the chaining, the undo of a failed ADD and the cache are checked
without root or network namespaces.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.boot import current_boot_id
from cni_bridge.errors import CniError
from cni_bridge.runner import cli
from cni_bridge.runner.cache import CachedAttachment, ResultCache
from cni_bridge.runner.netconf_files import NetworkList, load_network_list
from cni_bridge.runner.operations import Attachment, ListRunner

pytestmark = pytest.mark.unit


def write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def conflist(name: str, *types: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": name, "plugins": [{"type": t} for t in types], **extra}


def load_error(directory: Path | str, name: str) -> CniError:
    with pytest.raises(CniError) as info:
        load_network_list(str(directory), name)
    return info.value


# =============================================================== load_network_list

def test_conflist_is_preferred_over_conf_and_json(tmp_path: Path) -> None:
    # "00-" sorts first, but a single-plugin config is only looked at when no .conflist matches.
    write(tmp_path / "00-net.conf", {"cniVersion": "1.0.0", "name": "net", "type": "from-conf"})
    write(tmp_path / "01-net.json", {"cniVersion": "1.0.0", "name": "net", "type": "from-json"})
    raw = json.dumps(conflist("net", "from-conflist"), indent=2)
    write(tmp_path / "99-net.conflist", raw)
    netlist = load_network_list(str(tmp_path), "net")
    assert [p["type"] for p in netlist.plugins] == ["from-conflist"]
    assert netlist.source == str(tmp_path / "99-net.conflist")
    assert netlist.raw == raw.encode()  # the file's exact bytes: they go to the cache as they are
    assert (netlist.name, netlist.cni_version) == ("net", "1.0.0")
    assert (netlist.disable_check, netlist.disable_gc) == (False, False)


def test_conflists_are_searched_in_name_order(tmp_path: Path) -> None:
    write(tmp_path / "20-b.conflist", conflist("net", "second"))
    write(tmp_path / "10-a.conflist", conflist("net", "first"))
    write(tmp_path / "05-other.conflist", conflist("other", "other"))
    assert [p["type"] for p in load_network_list(str(tmp_path), "net").plugins] == ["first"]
    assert [p["type"] for p in load_network_list(str(tmp_path), "other").plugins] == ["other"]


def test_single_configs_in_name_order(tmp_path: Path) -> None:
    write(tmp_path / "20-net.conf", {"cniVersion": "0.4.0", "name": "net", "type": "second"})
    write(tmp_path / "10-net.json", {"cniVersion": "0.4.0", "name": "net", "type": "first"})
    assert [p["type"] for p in load_network_list(str(tmp_path), "net").plugins] == ["first"]


@pytest.mark.parametrize("suffix", [".conf", ".json"])
def test_single_config_is_wrapped_into_a_list(tmp_path: Path, suffix: str) -> None:
    plugin = {"cniVersion": "0.4.0", "name": "single", "type": "cni-bridge", "bridge": "br9", "ipam": {}}
    write(tmp_path / f"10-single{suffix}", plugin)
    netlist = load_network_list(str(tmp_path), "single")
    assert netlist.plugins == (plugin,)
    assert (netlist.name, netlist.cni_version) == ("single", "0.4.0")
    assert netlist.source == str(tmp_path / f"10-single{suffix}")
    # The cached "config" is the generated list, as libcni's ConfListFromConf makes it.
    assert json.loads(netlist.raw) == {"name": "single", "cniVersion": "0.4.0", "plugins": [plugin]}


def test_other_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "10-net.conflist.bak", "{broken")
    write(tmp_path / "README", "not json")
    (tmp_path / "20-dir.conflist").mkdir()  # a directory with a config-like name
    write(tmp_path / "30-net.conflist", conflist("net", "cni-bridge"))
    assert load_network_list(str(tmp_path), "net").source.endswith("30-net.conflist")


@pytest.mark.parametrize(("versions", "declared", "expected"), [
    (["0.4.0", "1.1.0", "1.0.0"], "0.3.1", "1.1.0"),
    (["1.0.0", "99.0.0"], "0.4.0", "1.0.0"),       # one this runner does not speak is skipped
    (["0.3.1"], "1.0.0", "1.0.0"),                 # cniVersion takes part in the choice
    (["7.7.7"], "0.4.0", "0.4.0"),                 # nothing known: cniVersion stays
])
def test_cni_versions_picks_the_newest_supported(tmp_path: Path, versions: list[str], declared: str,
                                                 expected: str) -> None:
    write(tmp_path / "10.conflist", conflist("net", "t", version=declared, cniVersions=versions))
    assert load_network_list(str(tmp_path), "net").cni_version == expected


@pytest.mark.parametrize("bad", ["1.0.0", [1, 2], {"1.0.0": True}])
def test_cni_versions_must_be_a_list_of_strings(tmp_path: Path, bad: Any) -> None:
    write(tmp_path / "10.conflist", conflist("net", "t", cniVersions=bad))
    error = load_error(tmp_path, "net")
    assert error.code == 7 and "cniVersions must be a list of strings" in error.msg, error


def test_plugin_drop_ins_are_appended_in_name_order(tmp_path: Path) -> None:
    write(tmp_path / "10-net.conflist", conflist("net", "inline-1", "inline-2"))
    write(tmp_path / "net" / "20-b.conf", {"type": "dropin-b", "key": "b"})
    write(tmp_path / "net" / "10-a.conf", {"type": "dropin-a"})
    write(tmp_path / "net" / "30-c.json", {"type": "not-a-conf-suffix"})
    write(tmp_path / "other" / "10.conf", {"type": "other-network"})
    netlist = load_network_list(str(tmp_path), "net")
    assert [p["type"] for p in netlist.plugins] == ["inline-1", "inline-2", "dropin-a", "dropin-b"]
    assert netlist.plugins[3] == {"type": "dropin-b", "key": "b"}


def test_drop_ins_also_extend_a_single_config(tmp_path: Path) -> None:
    write(tmp_path / "10-net.conf", {"cniVersion": "1.0.0", "name": "net", "type": "main"})
    write(tmp_path / "net" / "10.conf", {"type": "extra"})
    assert [p["type"] for p in load_network_list(str(tmp_path), "net").plugins] == ["main", "extra"]


@pytest.mark.parametrize("flag", [True, "true", "True"])
def test_load_only_inlined_plugins_ignores_drop_ins(tmp_path: Path, flag: Any) -> None:
    write(tmp_path / "10-net.conflist", conflist("net", "inline", loadOnlyInlinedPlugins=flag))
    write(tmp_path / "net" / "10.conf", {"type": "dropin"})
    write(tmp_path / "net" / "20.conf", "{broken")  # not even read
    assert [p["type"] for p in load_network_list(str(tmp_path), "net").plugins] == ["inline"]


def test_list_of_drop_ins_only(tmp_path: Path) -> None:
    write(tmp_path / "10-net.conflist", {"cniVersion": "1.0.0", "name": "net"})
    write(tmp_path / "net" / "10.conf", {"type": "dropin"})
    assert [p["type"] for p in load_network_list(str(tmp_path), "net").plugins] == ["dropin"]
    write(tmp_path / "20-empty.conflist", {"cniVersion": "1.0.0", "name": "empty"})
    error = load_error(tmp_path, "empty")
    assert error.code == 7 and "has no plugins" in error.msg and "empty" in error.msg, error


def test_drop_in_without_type_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "10-net.conflist", conflist("net", "inline"))
    bad = write(tmp_path / "net" / "10.conf", {"name": "no type here"})
    error = load_error(tmp_path, "net")
    assert error.code == 7 and str(bad) in error.msg and "no type" in error.msg, error


@pytest.mark.parametrize(("value", "expected"), [
    (None, False), (True, True), (False, False), ("true", True), ("false", False), ("TRUE", True), ("False", False),
])
@pytest.mark.parametrize("key", ["disableCheck", "disableGC"])
def test_disable_flags(tmp_path: Path, key: str, value: Any, expected: bool) -> None:
    extra = {} if value is None else {key: value}
    write(tmp_path / "10.conflist", conflist("net", "t", **extra))
    netlist = load_network_list(str(tmp_path), "net")
    assert getattr(netlist, "disable_check" if key == "disableCheck" else "disable_gc") is expected
    assert getattr(netlist, "disable_gc" if key == "disableCheck" else "disable_check") is False


@pytest.mark.parametrize("value", [1, "yes", "", None, []])
@pytest.mark.parametrize("key", ["disableCheck", "disableGC", "loadOnlyInlinedPlugins"])
def test_invalid_flags_are_rejected(tmp_path: Path, key: str, value: Any) -> None:
    path = write(tmp_path / "10.conflist", conflist("net", "t", **{key: value}))
    error = load_error(tmp_path, "net")
    assert error.code == 7, error
    assert f"{key} must be a boolean" in error.msg and str(path) in error.msg, error


# ----------------------------------------------------------------- load errors

def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    error = load_error(missing, "net")
    assert error.code == 7 and error.msg == f"no net configurations found in {missing}", error


def test_empty_directory(tmp_path: Path) -> None:
    write(tmp_path / "README", "nothing here")
    error = load_error(tmp_path, "net")
    assert error.code == 7 and error.msg == f"no net configurations found in {tmp_path}", error


def test_no_such_name(tmp_path: Path) -> None:
    write(tmp_path / "10.conflist", conflist("other", "t"))
    write(tmp_path / "20.conf", {"cniVersion": "1.0.0", "name": "other2", "type": "t"})
    error = load_error(tmp_path, "net")
    assert error.code == 7 and error.msg == f'no net configuration with name "net" in {tmp_path}', error


def test_broken_json_names_the_file(tmp_path: Path) -> None:
    bad = write(tmp_path / "10-bad.conflist", '{"name": "net", "plugins": [')
    error = load_error(tmp_path, "net")
    assert error.code == 6 and error.msg == f"{bad} is not valid JSON" and error.details, error


def test_broken_list_stops_the_search_as_in_libcni(tmp_path: Path) -> None:
    # libcni parses every .conflist before the one it looks for: a broken one is fatal.
    write(tmp_path / "10-bad.conflist", "[1, 2]")
    write(tmp_path / "20-good.conflist", conflist("net", "t"))
    error = load_error(tmp_path, "net")
    assert error.code == 6 and "10-bad.conflist is not a JSON object" in error.msg, error
    os.unlink(tmp_path / "10-bad.conflist")
    write(tmp_path / "10-other.conflist", conflist("other", "ok", ""))  # a list whose plugin 1 has no type
    error = load_error(tmp_path, "net")
    assert error.code == 7 and "10-other.conflist: plugin 1 has no type" in error.msg, error


@pytest.mark.parametrize("plugins", [[{"name": "x"}], [{"type": ""}], [{"type": 5}], ["bridge"]])
def test_plugin_without_type(tmp_path: Path, plugins: list[Any]) -> None:
    path = write(tmp_path / "10.conflist", {"cniVersion": "1.0.0", "name": "net", "plugins": plugins})
    error = load_error(tmp_path, "net")
    assert error.code == 7 and error.msg == f"{path}: plugin 0 has no type", error


def test_single_config_without_type(tmp_path: Path) -> None:
    path = write(tmp_path / "10.conf", {"cniVersion": "1.0.0", "name": "net"})
    error = load_error(tmp_path, "net")
    assert error.code == 7 and error.msg == f"{path}: network config has no type", error


@pytest.mark.parametrize("doc", [{"cniVersion": "1.0.0", "plugins": [{"type": "t"}]},
                                 {"cniVersion": "1.0.0", "name": 5, "plugins": [{"type": "t"}]}])
def test_list_without_name(tmp_path: Path, doc: dict[str, Any]) -> None:
    path = write(tmp_path / "10.conflist", doc)
    error = load_error(tmp_path, "net")
    assert error.code == 7 and error.msg == f"{path}: the network list has no name", error


@pytest.mark.parametrize("plugins", [[], {"type": "t"}])
def test_plugins_must_be_a_non_empty_list(tmp_path: Path, plugins: Any) -> None:
    write(tmp_path / "10.conflist", {"cniVersion": "1.0.0", "name": "net", "plugins": plugins})
    error = load_error(tmp_path, "net")
    assert error.code == 7 and "plugins must be a non-empty list" in error.msg, error


# =============================================================== ResultCache

RESULT = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
          "ips": [{"address": "10.1.2.3/24", "interface": 0}]}


def test_cache_write_in_libcni_format(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    raw = b'{"name": "net",\n "plugins": []}'
    cache.write("net", "ctr1", "eth0", "/run/netns/x", raw, (("IP", "10.1.2.3"), ("K", "v")),
                {"portMappings": [{"hostPort": 80, "containerPort": 8080}]}, RESULT)
    path = tmp_path / "results" / "net-ctr1-eth0"
    assert cache.path("net", "ctr1", "eth0") == str(path)
    doc = json.loads(path.read_text())
    assert doc == {
        "kind": "cniCacheV1", "containerId": "ctr1", "config": base64.b64encode(raw).decode(),
        "ifName": "eth0", "networkName": "net", "netns": "/run/netns/x",
        "cniArgs": [["IP", "10.1.2.3"], ["K", "v"]],
        "capabilityArgs": {"portMappings": [{"hostPort": 80, "containerPort": 8080}]},
        "result": RESULT,
        "cniBridgeBootId": current_boot_id(),  # an extra key, which libcni ignores
    }
    assert base64.b64decode(doc["config"]) == raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["net-ctr1-eth0"]  # no temporary file left


def test_cache_omits_empty_arguments(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    cache.write("net", "c", "eth0", "/x", b"{}", (), {}, RESULT)
    doc = json.loads((tmp_path / "results" / "net-c-eth0").read_text())
    assert "cniArgs" not in doc and "capabilityArgs" not in doc  # Go's omitempty


def test_cache_round_trip_and_delete(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    assert cache.read("net", "c", "eth0") is None
    cache.write("net", "c", "eth0", "/run/netns/c", b"{}", (("A", "1"),), {"x": 1}, RESULT)
    assert cache.read("net", "c", "eth0") == CachedAttachment(
        network="net", container_id="c", ifname="eth0", netns="/run/netns/c", cni_args=(("A", "1"),),
        capability_args={"x": 1}, result=RESULT, boot_id=current_boot_id())
    assert cache.read("net", "c", "eth1") is None
    cache.write("net", "c", "eth0", "/run/netns/c", b"{}", (), {}, {**RESULT, "dns": {}})  # overwrite
    entry = cache.read("net", "c", "eth0")
    assert entry is not None and entry.result == {**RESULT, "dns": {}} and entry.cni_args == ()
    cache.delete("net", "c", "eth0")
    assert cache.read("net", "c", "eth0") is None
    assert os.listdir(tmp_path / "results") == []
    cache.delete("net", "c", "eth0")  # deleting again is no error


def test_cache_reads_an_entry_written_by_libcni(tmp_path: Path) -> None:
    # As cnitool (libcni 1.x) writes it: Go marshals []byte as base64 and [][2]string as lists.
    config = b'{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"}]}'
    write(tmp_path / "results" / "net-cnitool-0123456789abcdef0123-eth0", {
        "kind": "cniCacheV1", "containerId": "cnitool-0123456789abcdef0123",
        "config": base64.b64encode(config).decode(), "ifName": "eth0", "networkName": "net",
        "netns": "/run/netns/n1", "cniArgs": [["IP", "10.0.0.9"]], "result": RESULT})
    entry = ResultCache(str(tmp_path)).read("net", "cnitool-0123456789abcdef0123", "eth0")
    assert entry == CachedAttachment("net", "cnitool-0123456789abcdef0123", "eth0", "/run/netns/n1",
                                     (("IP", "10.0.0.9"),), {}, RESULT)


@pytest.mark.parametrize("content", ["{broken", "[]", '{"kind": "cniCacheV2", "result": {}}', '{"result": {}}'])
def test_cache_ignores_what_is_not_a_v1_entry(tmp_path: Path, content: str) -> None:
    write(tmp_path / "results" / "net-c-eth0", content)
    cache = ResultCache(str(tmp_path))
    assert cache.read("net", "c", "eth0") is None
    assert cache.attachments("net") == []


def test_cache_entry_without_result(tmp_path: Path) -> None:
    write(tmp_path / "results" / "net-c-eth0", {"kind": "cniCacheV1", "containerId": "c", "ifName": "eth0",
                                                "networkName": "net", "config": ""})
    entry = ResultCache(str(tmp_path)).read("net", "c", "eth0")
    assert entry is not None and entry.result is None and entry.netns == ""


def test_cache_attachments_of_one_network(tmp_path: Path) -> None:
    cache = ResultCache(str(tmp_path))
    assert cache.attachments("net") == []  # no results directory yet
    cache.write("net", "c2", "eth0", "/n/2", b"{}", (), {}, RESULT)
    cache.write("net", "c1", "eth1", "/n/1", b"{}", (), {}, RESULT)
    cache.write("net-2", "c3", "eth0", "/n/3", b"{}", (), {}, RESULT)  # file name starts with "net-" too
    cache.write("other", "c4", "eth0", "/n/4", b"{}", (), {}, RESULT)
    found = cache.attachments("net")
    assert [(a.container_id, a.ifname, a.netns) for a in found] == [("c1", "eth1", "/n/1"), ("c2", "eth0", "/n/2")]
    assert [a.container_id for a in cache.attachments("net-2")] == ["c3"]


def test_cache_write_failure_is_a_cni_error(tmp_path: Path) -> None:
    blocker = write(tmp_path / "file", "x")
    with pytest.raises(CniError) as info:
        ResultCache(str(blocker)).write("net", "c", "eth0", "/x", b"{}", (), {}, RESULT)
    assert info.value.code == 5 and "net" in info.value.msg


# =============================================================== the command line

def run_cli(argv: list[str], environ: dict[str, str] | None = None,
            capsys: pytest.CaptureFixture[str] | None = None) -> tuple[int, str, str]:
    assert capsys is not None
    rc = cli.run(argv, environ or {})
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", [
    ["frobnicate", "net"],
    ["add"], ["add", "net"], ["add", "net", "ns", "extra"],
    ["check", "net"], ["del"],
    ["gc"], ["gc", "net", "ns", "extra"], ["status"],
    ["add", "--bogus", "net", "ns"], ["add", "-x", "net", "ns"],
    ["add", "net", "ns", "-i"], ["add", "net", "ns", "--container-id"],
])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Nothing is loaded: the config directory does not even exist.
    rc, out, err = run_cli(argv, {"NETCONFPATH": str(tmp_path / "none")}, capsys)
    assert rc == 2, (out, err)
    assert out == ""
    assert err.startswith("cni-bridge: ") and "cni-bridge --help" in err, err


def test_usage_error_messages(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown command 'frob'" in run_cli(["frob"], {}, capsys)[2]
    assert "add takes NETNAME NETNS" in run_cli(["add", "net"], {}, capsys)[2]
    assert "gc takes NETNAME" in run_cli(["gc"], {}, capsys)[2]
    assert "unknown option --bogus" in run_cli(["del", "--bogus", "n", "x"], {}, capsys)[2]
    assert "-i needs a value" in run_cli(["del", "n", "x", "-i"], {}, capsys)[2]


@pytest.mark.parametrize("flag", ["--help", "-h", "help"])
def test_help(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli([flag, "ignored"], {}, capsys)
    assert rc == 0 and err == ""
    assert out == cli.HELP
    for word in ("add|check|del", "NETCONFPATH", "CNI_PATH", "CAP_ARGS", "CNI_CACHE_DIR", "CNI_ARGS"):
        assert word in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from cni_bridge import __version__
    assert run_cli(["--version"], {}, capsys) == (0, f"cni-bridge {__version__}\n", "")


def test_parse_options_anywhere() -> None:
    assert cli._parse(["add", "-i", "net1", "mynet", "/run/netns/x", "--container-id", "abc"]) == (
        "add", {"ifname": "net1", "container_id": "abc"}, ["mynet", "/run/netns/x"])
    assert cli._parse(["del", "mynet", "--ifname=eth3", "x", "--container-id=c-1"]) == (
        "del", {"ifname": "eth3", "container_id": "c-1"}, ["mynet", "x"])
    assert cli._parse(["check", "--ifname", "e", "n", "x"])[1] == {"ifname": "e"}
    assert cli._parse(["gc", "mynet"]) == ("gc", {}, ["mynet"])
    assert cli._parse(["status", "mynet"]) == ("status", {}, ["mynet"])


@pytest.mark.parametrize(("text", "pairs"), [
    ("", ()),
    ("IP=10.1.2.3", (("IP", "10.1.2.3"),)),
    ("IgnoreUnknown=1;IP=10.1.2.3;K8S_POD_NAME=web-0", (("IgnoreUnknown", "1"), ("IP", "10.1.2.3"),
                                                        ("K8S_POD_NAME", "web-0"))),
])
def test_cni_args_parsing(text: str, pairs: tuple[tuple[str, str], ...]) -> None:
    assert cli._cni_args(text) == pairs


@pytest.mark.parametrize("text", ["IP", "=x", "IP=", "A=1;;B=2", "A=1;", "A=b=c"])
def test_invalid_cni_args(text: str) -> None:
    with pytest.raises(cli.UsageError, match="invalid CNI_ARGS pair"):
        cli._cni_args(text)


def test_capability_args() -> None:
    assert cli._capability_args("") == {}
    pm = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}
    assert cli._capability_args(json.dumps(pm)) == pm
    with pytest.raises(cli.UsageError, match="CAP_ARGS is not valid JSON"):
        cli._capability_args("{portMappings")
    for text in ("[]", '"x"', "3", "null"):
        with pytest.raises(cli.UsageError, match="CAP_ARGS must be a JSON object"):
            cli._capability_args(text)


def test_cnitool_container_id() -> None:
    path = "/run/netns/web"
    expected = "cnitool-" + hashlib.sha512(path.encode()).hexdigest()[:20]
    assert cli._cnitool_container_id(path) == expected
    assert len(expected) == len("cnitool-") + 20
    # As cnitool: fmt.Sprintf("cnitool-%x", sha512.Sum512([]byte(netns))[:10]).
    assert expected == "cnitool-" + hashlib.sha512(b"/run/netns/web").digest()[:10].hex()


def test_netns_name_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "NETNS_DIR", str(tmp_path))
    (tmp_path / "web").touch()
    assert cli._netns_path("web") == str(tmp_path / "web")
    # A bare name means the netns directory even when that netns is gone (del after `ip netns del`
    # must find the container ID that add derived); relative paths need a slash.
    monkeypatch.chdir(tmp_path / "..")
    assert cli._netns_path("absent") == str(tmp_path / "absent")
    assert cli._netns_path("/proc/1/ns/net") == "/proc/1/ns/net"
    assert cli._netns_path("/run/netns/../netns/x") == "/run/netns/x"
    assert cli._netns_path("./web") == str(tmp_path.parent / "web")


def test_netns_name_resolves_to_run_netns() -> None:
    assert cli.NETNS_DIR == "/run/netns"


def test_attachment_from_options_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "NETNS_DIR", str(tmp_path))
    (tmp_path / "web").touch()
    netns = str(tmp_path / "web")
    env = {"CNI_ARGS": "IP=10.1.2.3;X=y", "CAP_ARGS": '{"mac": "02:00:00:00:00:01"}'}
    a = cli._attachment({}, "web", env)
    assert a == Attachment(cli._cnitool_container_id(netns), netns, "eth0", (("IP", "10.1.2.3"), ("X", "y")),
                           {"mac": "02:00:00:00:00:01"})
    a = cli._attachment({}, "web", {"CNI_IFNAME": "net7", "CNI_CONTAINERID": "ctr-env"})
    assert (a.container_id, a.ifname, a.cni_args, a.capability_args) == ("ctr-env", "net7", (), {})
    a = cli._attachment({"ifname": "net9", "container_id": "ctr-opt"}, netns,
                        {"CNI_IFNAME": "net7", "CNI_CONTAINERID": "ctr-env"})
    assert (a.container_id, a.ifname, a.netns) == ("ctr-opt", "net9", netns)


@pytest.mark.parametrize(("options", "needle"), [
    ({"ifname": "a/b"}, "interface name"),
    ({"ifname": "x" * 16}, "interface name"),
    ({"container_id": "bad id!"}, "container ID"),
])
def test_attachment_rejects_invalid_names(options: dict[str, str], needle: str) -> None:
    with pytest.raises(cli.UsageError) as info:
        cli._attachment(options, "/run/netns/x", {})
    assert needle in str(info.value) and "CNI_" not in str(info.value), info.value


@pytest.mark.parametrize(("env", "needle"), [
    ({"CNI_ARGS": "IP"}, "invalid CNI_ARGS pair 'IP'"),
    ({"CAP_ARGS": "[1]"}, "CAP_ARGS must be a JSON object"),
    ({"CAP_ARGS": "{"}, "CAP_ARGS is not valid JSON"),
])
def test_bad_runtime_arguments_exit_2_before_any_plugin_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             env: dict[str, str], needle: str) -> None:
    log = tmp_path / "calls.jsonl"
    confdir = tmp_path / "conf"
    write(confdir / "10.conflist", conflist("net", "fake"))
    plugin_dir = make_fake_plugin(tmp_path, log)
    rc, out, err = run_cli(["add", "net", "/run/netns/x"],
                           {"NETCONFPATH": str(confdir), "CNI_PATH": plugin_dir,
                            "CNI_CACHE_DIR": str(tmp_path / "cache"), **env}, capsys)
    assert rc == 2 and needle in err, (rc, out, err)
    assert not log.exists()


def test_config_errors_exit_1_with_the_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(["status", "net"], {"NETCONFPATH": str(tmp_path)}, capsys)
    assert rc == 1 and out == ""
    assert err == f"cni-bridge status: no net configurations found in {tmp_path} (CNI error code 7)\n"


# =============================================================== ListRunner._config

def netlist_of(*plugins: dict[str, Any], version: str = "1.0.0", name: str = "net", **flags: bool) -> NetworkList:
    raw = json.dumps({"cniVersion": version, "name": name, "plugins": list(plugins)}).encode()
    return NetworkList(name=name, cni_version=version, plugins=tuple(plugins), raw=raw, source="/x", **flags)


def config_of(plugin: dict[str, Any], prev: dict[str, Any] | None = None, caps: dict[str, Any] | None = None,
              attachment: bool = True, **list_kw: Any) -> dict[str, Any]:
    runner = ListRunner((), ResultCache("/nonexistent"), {})
    a = Attachment("c", "/run/netns/x", "eth0", (), caps or {}) if attachment else None
    doc: dict[str, Any] = json.loads(runner._config(netlist_of(plugin, **list_kw), plugin, prev, a))
    return doc


PM = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


def test_config_injects_name_and_version_of_the_list() -> None:
    plugin = {"type": "bridge", "name": "ignored", "cniVersion": "0.3.1", "bridge": "br0"}
    doc = config_of(plugin, name="mynet", version="1.1.0")
    assert doc == {"type": "bridge", "name": "mynet", "cniVersion": "1.1.0", "bridge": "br0"}
    assert "prevResult" not in doc and "runtimeConfig" not in doc


def test_config_injects_prev_result() -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}], "ips": []}
    assert config_of({"type": "x"}, prev)["prevResult"] == prev


def test_only_enabled_and_provided_capabilities_become_runtime_config() -> None:
    caps = {"portMappings": PM, "bandwidth": {"ingressRate": 1000}, "mac": "02:00:00:00:00:07"}
    plugin = {"type": "x", "capabilities": {"portMappings": True, "bandwidth": False, "ips": True, "mac": "true"}}
    doc = config_of(plugin, caps=caps)
    # bandwidth is disabled, ips is enabled but not provided, "true" as a string is not true.
    assert doc["runtimeConfig"] == {"portMappings": PM}
    assert doc["capabilities"] == plugin["capabilities"]  # the plugin's own keys are passed as they are


@pytest.mark.parametrize("capabilities", [None, {}, ["portMappings"], "portMappings", {"portMappings": 1}])
def test_no_runtime_config_without_enabled_capabilities(capabilities: Any) -> None:
    plugin: dict[str, Any] = {"type": "x"} if capabilities is None else {"type": "x", "capabilities": capabilities}
    assert "runtimeConfig" not in config_of(plugin, caps={"portMappings": PM})


def test_no_runtime_config_without_an_attachment() -> None:
    # GC and STATUS: no attachment, no capability arguments.
    doc = config_of({"type": "x", "capabilities": {"portMappings": True}}, attachment=False)
    assert "runtimeConfig" not in doc


def test_runtime_config_replaces_a_static_one() -> None:
    # As libcni: injected capabilities replace the plugin's runtimeConfig key.
    plugin = {"type": "x", "capabilities": {"portMappings": True}, "runtimeConfig": {"portMappings": []}}
    assert config_of(plugin, caps={"portMappings": PM})["runtimeConfig"] == {"portMappings": PM}


# =============================================================== ListRunner with a fake plugin

FAKE_PLUGIN = r'''
import json, os, sys
conf = json.loads(sys.stdin.read())
cmd = os.environ["CNI_COMMAND"]
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(LOG, "a") as f:
    f.write(json.dumps({"cmd": cmd, "type": conf["type"], "conf": conf, "env": env}) + "\n")
if conf.get("fail") == cmd:
    print(json.dumps({"cniVersion": conf["cniVersion"], "code": 42, "msg": "fake failure", "details": "on purpose"}))
    sys.exit(1)
if cmd == "ADD":
    result = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}
    result["interfaces"].append({"name": conf["type"]})
    print(json.dumps(result))
'''


def make_fake_plugin(tmp_path: Path, log: Path, *types: str) -> str:
    """A directory with the fake plugin under each name in ``types`` (default "fake")."""
    directory = tmp_path / "bin"
    directory.mkdir(exist_ok=True)
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    for name in types or ("fake",):
        script = directory / name
        script.write_text(f"#!{python} -I\nLOG = {str(log)!r}\n{FAKE_PLUGIN}")
        script.chmod(0o755)
    return str(directory)


class Fake:
    def __init__(self, tmp_path: Path, *types: str) -> None:
        self.log = tmp_path / "calls.jsonl"
        self.path = (make_fake_plugin(tmp_path, self.log, *types), str(tmp_path / "empty-dir"))
        self.cache = ResultCache(str(tmp_path / "cache"))
        # The caller's CNI_BRIDGE_HELPER reaches the plugins as it is, in any mount namespace.
        self.runner = ListRunner(self.path, self.cache,
                                 {"PATH": "/usr/bin:/bin", "CNI_STRAY": "dropped", "CNI_BRIDGE_HELPER": "1"})
        self.attachment = Attachment("ctr-1", "/run/netns/x", "eth0", (("IP", "10.1.2.3"), ("A", "b")),
                                     {"portMappings": PM})

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        self.log.unlink()
        return calls


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path, "fake-a", "fake-b", "fake-c")


def test_add_chains_results_and_caches_the_last(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a", "capabilities": {"portMappings": True}}, {"type": "fake-b"},
                         {"type": "fake-c"})
    result = fake.runner.add(netlist, fake.attachment)
    assert [i["name"] for i in result["interfaces"]] == ["fake-a", "fake-b", "fake-c"]
    calls = fake.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [("ADD", "fake-a"), ("ADD", "fake-b"), ("ADD", "fake-c")]
    assert "prevResult" not in calls[0]["conf"]
    assert [i["name"] for i in calls[1]["conf"]["prevResult"]["interfaces"]] == ["fake-a"]
    assert [i["name"] for i in calls[2]["conf"]["prevResult"]["interfaces"]] == ["fake-a", "fake-b"]
    assert calls[0]["conf"]["runtimeConfig"] == {"portMappings": PM}
    assert "runtimeConfig" not in calls[1]["conf"]
    assert calls[0]["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr-1", "CNI_NETNS": "/run/netns/x",
                               "CNI_IFNAME": "eth0", "CNI_ARGS": "IP=10.1.2.3;A=b",
                               "CNI_PATH": os.pathsep.join(fake.path), "CNI_BRIDGE_HELPER": "1"}
    entry = fake.cache.read("net", "ctr-1", "eth0")
    assert entry is not None and entry.result == result and entry.netns == "/run/netns/x"
    assert entry.cni_args == (("IP", "10.1.2.3"), ("A", "b")) and entry.capability_args == {"portMappings": PM}
    raw = json.loads(Path(fake.cache.path("net", "ctr-1", "eth0")).read_text())["config"]
    assert base64.b64decode(raw) == netlist.raw


def test_add_refuses_a_cached_attachment(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a"})
    fake.runner.add(netlist, fake.attachment)
    fake.calls()
    with pytest.raises(CniError) as info:
        fake.runner.add(netlist, fake.attachment)
    assert info.value.code == 103 and "already attached to network 'net'" in info.value.msg, info.value
    assert "run del first" in info.value.details
    assert fake.calls() == []
    # Another ifname of the same container is another attachment.
    fake.runner.add(netlist, Attachment("ctr-1", "/run/netns/x", "eth1"))


def test_failed_add_deletes_the_partial_attachment_in_reverse_order(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a"}, {"type": "fake-b", "name": "second", "fail": "ADD"}, {"type": "fake-c"})
    with pytest.raises(CniError) as info:
        fake.runner.add(netlist, fake.attachment)
    error = info.value
    assert error.code == 42, error
    assert error.msg == 'plugin type="fake-b" name="second" failed (add): fake failure', error
    assert "on purpose" in error.details and "the partial attachment was deleted" in error.details
    calls = fake.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [
        ("ADD", "fake-a"), ("ADD", "fake-b"), ("DEL", "fake-c"), ("DEL", "fake-b"), ("DEL", "fake-a")]
    assert all("prevResult" not in c["conf"] for c in calls[2:])
    assert fake.cache.read("net", "ctr-1", "eth0") is None


def test_failed_cleanup_is_reported_too(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a", "fail": "DEL"}, {"type": "fake-b", "fail": "ADD"})
    with pytest.raises(CniError) as info:
        fake.runner.add(netlist, fake.attachment)
    assert info.value.msg.startswith('plugin type="fake-b" failed (add)'), info.value
    assert 'cleanup DEL also failed: plugin type="fake-a" failed (delete)' in info.value.details, info.value


def test_cleanup_goes_on_past_a_failing_del(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a"}, {"type": "fake-b", "fail": "DEL"}, {"type": "fake-c", "fail": "ADD"})
    with pytest.raises(CniError) as info:
        fake.runner.add(netlist, fake.attachment)
    assert [(c["cmd"], c["type"]) for c in fake.calls()] == [
        ("ADD", "fake-a"), ("ADD", "fake-b"), ("ADD", "fake-c"),
        ("DEL", "fake-c"), ("DEL", "fake-b"), ("DEL", "fake-a")]
    assert 'cleanup DEL also failed: plugin type="fake-b" failed (delete)' in info.value.details, info.value


def test_missing_plugin(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a"}, {"type": "cbt-no-such-plugin"})
    with pytest.raises(CniError) as info:
        fake.runner.add(netlist, fake.attachment)
    assert info.value.code == 50, info.value
    assert 'type="cbt-no-such-plugin" failed (add)' in info.value.msg, info.value
    assert 'failed to find plugin "cbt-no-such-plugin"' in info.value.msg, info.value
    # The plugin that cannot be found cannot DEL either, but the earlier ones still clean up.
    assert [(c["cmd"], c["type"]) for c in fake.calls()] == [("ADD", "fake-a"), ("DEL", "fake-a")]
    assert 'cleanup DEL also failed: plugin type="cbt-no-such-plugin" failed (delete)' in info.value.details
    assert fake.cache.read("net", "ctr-1", "eth0") is None


def test_plugin_printing_garbage(tmp_path: Path) -> None:
    directory = tmp_path / "bin"
    directory.mkdir()
    script = directory / "garbage"
    script.write_text("#!/bin/sh\ncat >/dev/null\necho 'not json'\nexit 3\n")
    script.chmod(0o755)
    runner = ListRunner((str(directory),), ResultCache(str(tmp_path / "cache")), {})
    with pytest.raises(CniError) as info:
        runner.status(netlist_of({"type": "garbage"}, version="1.1.0"))
    assert info.value.code == 6 and "netplugin failed: 'not json'" in info.value.msg, info.value
    assert "exited with status 3" in info.value.details


def test_check_and_del_use_the_cached_result(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a"}, {"type": "fake-b"})
    result = fake.runner.add(netlist, fake.attachment)
    fake.calls()
    fake.runner.check(netlist, fake.attachment)
    calls = fake.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [("CHECK", "fake-a"), ("CHECK", "fake-b")]
    assert all(c["conf"]["prevResult"] == result for c in calls)
    fake.runner.delete(netlist, fake.attachment)
    calls = fake.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [("DEL", "fake-b"), ("DEL", "fake-a")]
    assert all(c["conf"]["prevResult"] == result for c in calls)
    assert calls[0]["env"]["CNI_ARGS"] == "IP=10.1.2.3;A=b"
    assert fake.cache.read("net", "ctr-1", "eth0") is None
    # DEL of something not cached still calls every plugin (without prevResult): DEL is idempotent.
    fake.runner.delete(netlist, fake.attachment)
    calls = fake.calls()
    assert [(c["cmd"], "prevResult" in c["conf"]) for c in calls] == [("DEL", False), ("DEL", False)]


def test_check_and_del_reuse_the_runtime_arguments_of_add(fake: Fake) -> None:
    # portmap, for one, removes nothing on DEL without the portMappings it got on ADD.
    netlist = netlist_of({"type": "fake-a", "capabilities": {"portMappings": True}})
    fake.runner.add(netlist, fake.attachment)
    fake.calls()
    bare = Attachment("ctr-1", "/run/netns/x", "eth0")
    fake.runner.check(netlist, bare)
    fake.runner.delete(netlist, bare)
    calls = fake.calls()
    assert [c["cmd"] for c in calls] == ["CHECK", "DEL"]
    for call in calls:
        assert call["conf"]["runtimeConfig"] == {"portMappings": PM}, call
        assert call["env"]["CNI_ARGS"] == "IP=10.1.2.3;A=b", call
    # Arguments given again win over the cached ones.
    fake.runner.add(netlist, fake.attachment)
    fake.calls()
    other = Attachment("ctr-1", "/run/netns/x", "eth0", (("K", "v"),), {"portMappings": []})
    fake.runner.delete(netlist, other)
    (call,) = fake.calls()
    assert call["conf"]["runtimeConfig"] == {"portMappings": []} and call["env"]["CNI_ARGS"] == "K=v"
    # Nothing cached: nothing to complete.
    fake.runner.delete(netlist, bare)
    (call,) = fake.calls()
    assert "runtimeConfig" not in call["conf"] and call["env"]["CNI_ARGS"] == ""


def test_cached_result_is_converted_to_the_list_version(fake: Fake) -> None:
    fake.runner.add(netlist_of({"type": "fake-a"}, version="1.0.0"), fake.attachment)
    fake.calls()
    fake.runner.check(netlist_of({"type": "fake-a"}, version="0.4.0"), fake.attachment)
    (call,) = fake.calls()
    assert call["conf"]["cniVersion"] == "0.4.0" and call["conf"]["prevResult"]["cniVersion"] == "0.4.0"


def test_check_without_cached_result(fake: Fake) -> None:
    with pytest.raises(CniError) as info:
        fake.runner.check(netlist_of({"type": "fake-a"}), fake.attachment)
    assert info.value.code == 3 and "no cached result for eth0 of container ctr-1" in info.value.msg, info.value
    assert fake.calls() == []


def test_check_version_and_disable_check(fake: Fake) -> None:
    with pytest.raises(CniError) as info:
        fake.runner.check(netlist_of({"type": "fake-a"}, version="0.3.1"), fake.attachment)
    assert info.value.code == 1 and "does not support the CHECK command" in info.value.msg
    fake.runner.check(netlist_of({"type": "fake-a"}, disable_check=True), fake.attachment)  # no cache needed
    assert fake.calls() == []


def test_check_failure_names_the_plugin(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a"}, {"type": "fake-b", "fail": "CHECK"}, {"type": "fake-c"})
    fake.runner.add(netlist, fake.attachment)
    fake.calls()
    with pytest.raises(CniError) as info:
        fake.runner.check(netlist, fake.attachment)
    assert info.value.msg == 'plugin type="fake-b" failed (check): fake failure' and info.value.code == 42
    assert [c["type"] for c in fake.calls()] == ["fake-a", "fake-b"]


def test_gc_deletes_stale_attachments_and_passes_the_rest(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a"}, {"type": "fake-b"}, version="1.1.0")
    for cid, ifname in (("live", "eth0"), ("stale", "eth0"), ("live", "eth1")):
        fake.runner.add(netlist, Attachment(cid, f"/run/netns/{cid}", ifname))
    fake.calls()
    report = fake.runner.gc(netlist, lambda entry: entry.container_id == "stale")
    assert report.deleted == ["stale/eth0"] and report.errors == []
    assert report.valid == ["live/eth0", "live/eth1"]
    assert report.collected == ['type="fake-a"', 'type="fake-b"']
    calls = fake.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [
        ("DEL", "fake-b"), ("DEL", "fake-a"), ("GC", "fake-a"), ("GC", "fake-b")]
    assert calls[0]["env"]["CNI_NETNS"] == "/run/netns/stale" and "prevResult" in calls[0]["conf"]
    valid = [{"containerID": "live", "ifname": "eth0"}, {"containerID": "live", "ifname": "eth1"}]
    assert calls[2]["conf"]["cni.dev/valid-attachments"] == valid
    assert calls[2]["env"]["CNI_COMMAND"] == "GC" and calls[2]["env"]["CNI_CONTAINERID"] == ""
    assert [a.container_id for a in fake.cache.attachments("net")] == ["live", "live"]


def test_gc_skips_plugins_when_disabled_or_too_old(fake: Fake) -> None:
    for netlist in (netlist_of({"type": "fake-a"}, version="1.1.0", disable_gc=True),
                    netlist_of({"type": "fake-a"}, version="1.0.0")):
        fake.runner.add(netlist, Attachment("stale", "/run/netns/gone", "eth0"))
        fake.calls()
        report = fake.runner.gc(netlist, lambda entry: True)
        # Stale cached attachments are still deleted; only the plugins' GC is skipped.
        assert report.deleted == ["stale/eth0"] and report.collected == []
        assert [c["cmd"] for c in fake.calls()] == ["DEL"]


def test_gc_reports_errors_and_goes_on(fake: Fake) -> None:
    netlist = netlist_of({"type": "fake-a", "fail": "GC"}, {"type": "fake-b", "fail": "DEL"}, version="1.1.0")
    fake.runner.add(netlist, Attachment("stale", "/run/netns/gone", "eth0"))
    fake.calls()
    report = fake.runner.gc(netlist, lambda entry: True)
    assert report.deleted == [] and report.collected == ['type="fake-b"']
    assert len(report.errors) == 2, report.errors
    assert "failed to delete stale attachment stale eth0" in report.errors[0]
    assert 'plugin type="fake-a" failed (gc): fake failure' in report.errors[1]
    assert fake.cache.read("net", "stale", "eth0") is not None  # kept: its DEL did not succeed


def test_status(fake: Fake) -> None:
    assert fake.runner.status(netlist_of({"type": "fake-a"}, {"type": "fake-b"}, version="1.1.0")) is True
    calls = fake.calls()
    assert [(c["cmd"], c["type"]) for c in calls] == [("STATUS", "fake-a"), ("STATUS", "fake-b")]
    assert fake.runner.status(netlist_of({"type": "fake-a"}, version="1.0.0")) is False
    assert fake.calls() == []
    with pytest.raises(CniError) as info:
        fake.runner.status(netlist_of({"type": "fake-a"}, {"type": "fake-b", "fail": "STATUS"}, version="1.1.0"))
    assert info.value.msg == 'plugin type="fake-b" failed (status): fake failure' and info.value.code == 42
