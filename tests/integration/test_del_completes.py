"""DEL always completes: whatever the config now says, the attachment it names is removed.

Runtimes call DEL after every failed ADD, and again on teardown with the config as it is then,
which an operator may have edited into something ADD would refuse. A DEL that fails there
leaves a pod that can never be removed (containerd's RemovePodSandbox fails with it).

- (a) every corpus config (tests/go_compat_corpus.py) that cni-bridge's ADD rejects gets a
  DEL with the same config and environment: it exits 0 and changes nothing on the node (its
  links, iptables of both families, the stateDir and dataDir contents), read from the corpus
  run test_go_compat.py makes too (tests/go_compat_driver.py);
- (b) an attachment whose ADD succeeded (dual-stack, ipMasq, published tcp and udp ports) is
  deleted with its config edited into an invalid one: no veth, no rule, no reservation and no
  state record is left;
- (c) DEL with a stdin that is not a JSON object, or without a usable network name, is an
  error: non-zero exit and a CNI error object on stdout.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests import warm
from tests.go_compat_corpus import CASES
from tests.go_compat_driver import corpus_outcomes
from tests.leftovers import rules, state_records
from tests.plugin import (  # noqa: F401
    BIN,
    SKIP_REASON,
    Node,
    host_local,
    netconf,
    node,
    requires_plugin,
    reservations,
)

pytestmark = [pytest.mark.integration, requires_plugin]

V4, V6 = "10.168.0.0/24", "fd7c:cb68::/64"
HOST_PORT = 46080


def is_error_object(stdout: str) -> bool:
    try:
        error = json.loads(stdout)
    except ValueError:
        return False
    return isinstance(error, dict) and isinstance(error.get("code"), int) and isinstance(error.get("msg"), str)


# --- (a) the corpus configs ADD rejects --------------------------------------------------------


@pytest.mark.skipif(not os.access("/usr/lib/cni/bridge", os.X_OK), reason="the corpus run needs the reference plugins")
def test_del_after_each_rejected_corpus_add_completes_and_changes_nothing() -> None:
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    outcomes = corpus_outcomes(BIN)
    problems = []
    rejected = 0
    for case in CASES:
        cb = outcomes[case.id]["cb"]
        if cb["accepted"]:
            continue
        rejected += 1
        delete = cb["del"]
        if case.no_usable_name:
            # Nothing identifies an attachment: DEL cannot complete, and says so (see (c)).
            if delete["rc"] == 0 or not is_error_object(delete["stdout"]):
                problems.append(f"{case.id}: DEL without a usable name should be an error: rc={delete['rc']} "
                                f"stdout={delete['stdout'][:300]!r}")
        elif delete["rc"] != 0:
            problems.append(f"{case.id}: DEL after the rejected ADD exited {delete['rc']}: "
                            f"{(delete['stdout'] or delete['stderr'])[:300]!r}")
        if cb["del_changes"]:
            problems.append(f"{case.id}: DEL after the rejected ADD changed the node: {cb['del_changes']}")
    assert rejected > 50, f"only {rejected} corpus configs were rejected: the corpus lost its invalid cases"
    assert not problems, f"{len(problems)} of {rejected} rejected configs:\n" + "\n".join(problems)


# --- (b) an attachment deleted with an edited, invalid config -------------------------------------


def _edit_ranges(value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(conf: dict[str, Any]) -> None:
        conf["ipam"]["ranges"] = value
    return edit


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(conf: dict[str, Any]) -> None:
        conf[key] = value
    return edit


def _recase_with_garbage(conf: dict[str, Any]) -> None:
    """Keys as containerd might spell them, and ranges no ADD would take."""
    ipam = conf.pop("ipam")
    conf["IPAM"] = {"Type": ipam["type"], "DataDir": ipam["dataDir"], "Ranges": [[{"Subnet": "nonsense"}]]}
    conf["RuntimeConfig"] = {"PortMappings": [{"HostPort": HOST_PORT, "ContainerPort": 80, "Protocol": "tcp",
                                               "HostIP": ""}]}
    del conf["runtimeConfig"]


EDITS: dict[str, Callable[[dict[str, Any]], None]] = {
    "internal-with-ports": _set("internal", True),
    "overlapping-ranges": _edit_ranges([[{"subnet": V4}], [{"subnet": V4}]]),
    "ranges-garbage": _edit_ranges("garbage"),
    "ranges-bad-subnet": _edit_ranges([[{"subnet": "10.168.0.0/33"}], [{"subnet": V6}]]),
    "ranges-removed": _edit_ranges([]),
    "cniversion-unknown": _set("cniVersion", "9.9.9"),
    "mtu-string": _set("mtu", "1500"),
    "mtu-float": _set("mtu", 1500.5),
    "bridge-too-long": _set("bridge", "cbt-name-much-too-long"),
    "bridge-slash": _set("bridge", "cbt/x"),
    "portmappings-garbage": _set("runtimeConfig", {"portMappings": "garbage"}),
    "hairpin-and-promisc": _set("promiscMode", True),
    "recased-with-garbage": _recase_with_garbage,
}


def files_mentioning(directory: str, needle: str) -> list[str]:
    hits = []
    for top, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(top, name)
            if not os.path.isfile(path):
                continue  # the warm helper's socket, when the helper is on
            with open(path, "rb") as handle:
                if needle.encode() in handle.read() or needle in name:
                    hits.append(os.path.relpath(path, directory))
    return hits


@pytest.mark.parametrize("edit", list(EDITS), ids=list(EDITS))
def test_del_with_an_edited_invalid_config_removes_everything(node: Node, edit: str) -> None:
    container = node.add_container()
    data_dir = node.data_dir()
    conf = netconf(node.net_name(), node.bridge_name(), host_local(data_dir, V4, V6), version="1.0.0",
                   isGateway=True, ipMasq=True, hairpinMode=True,
                   runtimeConfig={"portMappings": [
                       {"hostPort": HOST_PORT, "containerPort": 80, "protocol": "tcp"},
                       {"hostPort": HOST_PORT + 1, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}]})
    links_before, rules_before = node.link_names(), rules(node)
    cid = f"cbt-del-{edit}"
    result = node.add(conf, cid, container)
    assert len(result["ips"]) == 2
    assert rules(node) != rules_before and reservations(data_dir, conf["name"])

    edited = copy.deepcopy(conf)
    EDITS[edit](edited)
    assert node.run("ADD", edited, cid + "-probe", container.path, "eth1").rc != 0, "the edit must make ADD refuse it"
    deleted = node.run("DEL", edited, cid, container.path)

    assert deleted.rc == 0 and deleted.stdout == "", f"DEL with the edited config failed: {deleted}"
    host_veth = host_veth_name(conf["name"], cid, "eth0")
    assert host_veth not in node.link_names() and "eth0" not in node.link_names(container)
    assert node.link_names() - {conf["bridge"]} == links_before, "links other than the bridge changed"
    assert rules(node) == rules_before, "iptables rules of the attachment are left"
    assert reservations(data_dir, conf["name"]) == {}
    assert state_records(node.state_dir) == [] and files_mentioning(node.state_dir, cid) == []


# --- (c) DEL that cannot know what to delete -------------------------------------------------------


# @REST@ stands for the stateDir and ipam keys, so that a DEL that went ahead would write only
# into the test's directories.
UNUSABLE: dict[str, bytes | dict[str, Any]] = {
    "not-json": b"this is not json",
    "empty-stdin": b"",
    "truncated-json": b'{"cniVersion": "1.0.0", @REST@, "name": "cbt-x",',
    "json-array": b'[{"cniVersion": "1.0.0", @REST@, "name": "cbt-x"}]',
    "json-string": b'"cbt-x"',
    "not-utf8": b'{"cniVersion": "1.0.0", @REST@, "name": "cbt-\xff"}',
    "name-missing": {"cniVersion": "1.0.0"},
    "name-empty": {"cniVersion": "1.0.0", "name": ""},
    "name-null": {"cniVersion": "1.0.0", "name": None},
    "name-number": {"cniVersion": "1.0.0", "name": 7},
    "name-path": {"cniVersion": "1.0.0", "name": "../cbt-escape"},
    "name-slash": {"cniVersion": "1.0.0", "name": "cbt/x"},
    "name-space": {"cniVersion": "1.0.0", "name": "cbt x"},
    "name-later-key-empty": b'{"cniVersion": "1.0.0", @REST@, "name": "cbt-x", "Name": ""}',
}


@pytest.mark.parametrize("stdin", list(UNUSABLE), ids=list(UNUSABLE))
def test_del_without_a_usable_name_is_an_error(node: Node, stdin: str) -> None:
    data_dir, state_dir = node.data_dir(), node.temp_dir()
    rest = {"type": "cni-bridge", "bridge": node.bridge_name(), "stateDir": state_dir,
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": V4}]]}}
    given = UNUSABLE[stdin]
    if isinstance(given, dict):
        raw = json.dumps({**rest, **given}).encode()
    else:
        raw = given.replace(b"@REST@", json.dumps(rest)[1:-1].encode())
    container = node.add_container()
    deleted = node.run("DEL", None, "cbt-del-unusable", container.path, stdin_override=raw)
    assert deleted.rc != 0, f"DEL succeeded without a usable name: {deleted}"
    assert is_error_object(deleted.stdout), f"no CNI error object on stdout: {deleted}"
    written = os.listdir(data_dir) + [f for f in os.listdir(state_dir) if not warm.is_helper_file(f)]
    assert written == [], "DEL without a name wrote something"
