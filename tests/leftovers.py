"""What a DEL must leave behind on a test node: none of our rules, none of our state records."""

from __future__ import annotations

import os

from tests.go_compat_driver import ruleset
from tests.plugin import Node


def rules(node: Node) -> list[str]:
    return ruleset(node.sh("iptables-save").stdout) + ruleset(node.sh("ip6tables-save").stdout)


def state_records(state_dir: str) -> list[str]:
    """Files below the stateDir's top level: per attachment, per port, per user of a shared rule."""
    found = []
    for top, _, files in os.walk(state_dir):
        if top != state_dir:
            found += [os.path.relpath(os.path.join(top, name), state_dir) for name in files]
    return found
