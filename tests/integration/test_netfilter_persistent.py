"""The netfilter-persistent plugin (deploy/restore/netfilter-persistent/90-cni-bridge) on `save`:
what 15-ip4tables and 25-ip6tables wrote loses cni-bridge's chains and rules, and keeps
everything else, loadable.

netfilter-persistent is not installed here (its package would save and load the host's own
rules at boot), and its plugins write the fixed /etc/iptables: the test runs the two Debian
plugins' save steps and ours in a private mount namespace whose /etc is an overlay, inside a
node namespace, so the host's /etc and firewall are never touched.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from tests import nstools
from tests.go_compat_driver import ruleset
from tests.plugin import REPO, Node, host_local, netconf, node, requires_plugin  # noqa: F401

pytestmark = [pytest.mark.integration, requires_plugin]

PLUGIN = os.path.join(REPO, "deploy", "restore", "netfilter-persistent", "90-cni-bridge")

# What 15-ip4tables and 25-ip6tables do on save, then ours, as run-parts runs them (name order).
SAVE = """set -e
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/upper,workdir=$1/work" /etc
mkdir -p /etc/iptables
touch /etc/iptables/rules.v4 && chmod 0640 /etc/iptables/rules.v4 && iptables-save > /etc/iptables/rules.v4
touch /etc/iptables/rules.v6 && chmod 0640 /etc/iptables/rules.v6 && ip6tables-save > /etc/iptables/rules.v6
"$2" save
cp -p /etc/iptables/rules.v4 /etc/iptables/rules.v6 "$1/out/"
"""

FOREIGN_V4 = ("INPUT", "-p", "tcp", "--dport", "22", "-m", "comment", "--comment", "operator rule", "-j", "ACCEPT")
FOREIGN_V6 = ("INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")


def test_save_takes_out_cni_bridge_rules_and_keeps_the_rest_loadable(node: Node) -> None:
    conf = netconf(node.net_name(), node.bridge_name(),
                   host_local(node.data_dir(), "10.98.0.0/24", "fd00:98::/64"), "1.0.0",
                   isGateway=True, ipMasq=True, stateDir=node.state_dir,
                   runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    node.add(conf, "ctr-save", node.add_container())
    node.sh("iptables", "-A", *FOREIGN_V4)
    node.sh("iptables", "-N", "OPERATOR-CHAIN")
    node.sh("ip6tables", "-A", *FOREIGN_V6)
    before = {tool: node.sh(tool).stdout for tool in ("iptables-save", "ip6tables-save")}
    assert "cni-bridge" in before["iptables-save"] and "CNIBR-" in before["ip6tables-save"]

    work = node.temp_dir()
    for sub in ("upper", "work", "out"):
        os.makedirs(os.path.join(work, sub))
    proc = subprocess.run(["ip", "netns", "exec", node.name, "unshare", "--mount", "--propagation", "private",
                           "sh", "-c", SAVE, "sh", work, PLUGIN], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc
    saved = {}
    for name, tool in (("rules.v4", "iptables-save"), ("rules.v6", "ip6tables-save")):
        path = os.path.join(work, "out", name)
        assert os.stat(path).st_mode & 0o777 == 0o640  # the mode 15-ip4tables gave it
        with open(path, encoding="utf-8") as handle:
            saved[tool] = handle.read()
        assert "cni-bridge" not in saved[tool] and "CNIBR-" not in saved[tool], saved[tool]
        # Nothing else went: the node's own listing, without our lines, is what was saved.
        ours = [line for line in ruleset(before[tool]) if "cni-bridge" in line or "CNIBR-" in line]
        assert ruleset(saved[tool]) == [line for line in ruleset(before[tool]) if line not in ours]
    assert '--comment "operator rule" -j ACCEPT' in saved["iptables-save"]
    assert ":OPERATOR-CHAIN" in saved["iptables-save"]

    # What a reboot would load: it loads, and it is the node's firewall without cni-bridge's.
    with nstools.throwaway_netns(1) as (fresh,):
        for tool, restore in (("iptables-save", "iptables-restore"), ("ip6tables-save", "ip6tables-restore")):
            subprocess.run(["ip", "netns", "exec", fresh, restore], input=saved[tool], text=True, check=True)
            assert ruleset(nstools.run_in_netns(fresh, tool).stdout) == ruleset(saved[tool])
