"""DEL reports every cleanup step that failed, not only the first.

The failures are real: the plugin runs in a private mount namespace (inside the node
namespace) where the firewall stateDir and the IPAM dataDir are read-only bind mounts of
themselves. Root ignores permission bits but not EROFS, so removing the firewall record
and releasing the reservation both fail, while the veth still goes. The mounts vanish
with the plugin's process: nothing on the host ever sees them.
"""

from __future__ import annotations

import os
import shlex
import stat
from typing import Any

import pytest

from tests.containerd_harness import node_rules
from tests.plugin import (  # noqa: F401
    BIN,
    Node,
    PluginRun,
    host_local,
    netconf,
    node,
    requires_plugin,
    reservations,
)

pytestmark = [pytest.mark.integration, requires_plugin]

V4 = "10.205.0.0/24"


def masquerading(node: Node) -> dict[str, Any]:
    return netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), V4),
                   isGateway=True, ipMasq=True, stateDir=node.state_dir)


def plugin_seeing_read_only(node: Node, *directories: str) -> str:
    """An executable that runs the plugin with ``directories`` mounted read-only for it alone."""
    mounts = " && ".join(f"mount --bind -o ro {shlex.quote(d)} {shlex.quote(d)}" for d in directories)
    inner = f"{mounts} && exec {shlex.quote(BIN)}"
    path = os.path.join(node.temp_dir(), "plugin-read-only")
    with open(path, "w", encoding="utf-8") as script:
        script.write(f"#!/bin/sh\nexec unshare --mount --propagation private sh -c {shlex.quote(inner)}\n")
    os.chmod(path, stat.S_IRWXU)
    return path


def test_del_reports_every_failed_step(node: Node) -> None:
    conf = masquerading(node)
    data_dir = conf["ipam"]["dataDir"]
    c = node.add_container()
    node.add(conf, "del-errs", c)
    assert reservations(data_dir, conf["name"])

    failing = plugin_seeing_read_only(node, node.state_dir, data_dir)
    r: PluginRun = node.run("DEL", conf, "del-errs", c.path, executable=failing)
    assert r.rc != 0 and isinstance(r.out, dict), r
    error = r.out
    # The firewall step runs before IPAM: its error is the first, and gives the code.
    assert error["code"] == 109, r  # FIREWALL_FAILURE
    assert "1 more" in error["msg"], r
    assert node.state_dir in error["details"] and data_dir in error["details"], r
    assert error["details"].lower().count("read-only file system") == 2, r
    # The steps that could run did: the veth is gone; the rules and the reservation are left.
    assert node.veths() == [] and node.link_names(c) == {"lo"}
    assert node_rules(node, "del-errs") and reservations(data_dir, conf["name"])

    # Once the directories are writable again, DEL finishes the job.
    node.ok("DEL", conf, "del-errs", c.path)
    assert node_rules(node, "del-errs") == [] and reservations(data_dir, conf["name"]) == {}
