"""cni-bridge accepts what the reference chain accepts, with the same meaning (Go's JSON rules).

Every case of tests/go_compat_corpus.py runs through the reference chain (Debian's
``bridge``, its ``host-local``, then ``portmap`` with the bridge's result as prevResult) and
through cni-bridge, each in its own container namespace, ADD then DEL. The ADD outcomes must
agree (both exit 0, or both fail), unless the case names a deliberate difference that the
README lists in its section "Deliberate differences from the reference chain". When both
accept, what they built must agree too: the container's addresses, routes, MTU and requested
MAC, the bridge it hangs on (by role: the config's bridge or the plugin's default), that
bridge's addresses and promiscuity, hairpin (for cases without published ports: cni-bridge
turns it on for those), the result's DNS, and the DNAT rules and masquerade jumps for the
container's addresses.

The cases are spread over a few node namespaces, one driver process each, which runs its cases
one after the other (tests/go_compat_driver.py); test_del_completes.py reads the same run.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest

from tests.go_compat_corpus import CASES, Case
from tests.go_compat_driver import corpus_outcomes
from tests.plugin import BIN, REPO, SKIP_REASON, requires_plugin

REF_PLUGINS = ("/usr/lib/cni/bridge", "/usr/lib/cni/portmap", "/usr/lib/cni/host-local")
SECTION = "Deliberate differences from the reference chain"

pytestmark = [
    pytest.mark.integration,
    requires_plugin,
    pytest.mark.skipif(not all(os.access(p, os.X_OK) for p in REF_PLUGINS),
                       reason="reference plugins missing from /usr/lib/cni (Debian containernetworking-plugins)"),
]


def deliberate_differences(readme: str) -> set[str]:
    """The ids of that README section: list items that start with a backticked id, up to the
    next heading of the section's level."""
    lines = readme.splitlines()
    for start, line in enumerate(lines):
        heading = re.match(r"(#+)\s+(.*?)\s*$", line)
        if heading and heading.group(2) == SECTION:
            level = len(heading.group(1))
            ids: set[str] = set()
            fenced = False
            for body in lines[start + 1:]:
                fenced ^= body.startswith("```")
                nested = re.match(r"(#+)\s", body)
                if nested and not fenced and len(nested.group(1)) <= level:
                    break
                item = re.match(r"\s*[-*]\s+`([a-z0-9][a-z0-9.-]*)`", body)
                if item and not fenced:
                    ids.add(item.group(1))
            return ids
    return set()


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """The corpus run; only the cases selected (``-k``) when not all of them are."""
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    selected = {item.callspec.params["case"].id for item in request.session.items
                if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)}
    return corpus_outcomes(BIN, None if len(selected) == len(CASES) else tuple(sorted(selected)))


@pytest.fixture(scope="module")
def listed_differences() -> set[str]:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        return deliberate_differences(handle.read())


def describe(side: dict[str, Any], *steps: str) -> str:
    """The failing steps' error output, or "ok"."""
    parts = []
    for step in steps:
        run = side.get(step)
        if run is None or run["rc"] == 0:
            continue
        text = (run["stdout"].strip() or run["stderr"].strip()).replace("\n", " ")
        parts.append(f"{step} exit {run['rc']}: {text[:400]}")
    return "; ".join(parts) or "ok"


def verdicts(answer: dict[str, Any]) -> tuple[str, str]:
    ref, cb = answer["ref"], answer["cb"]
    return ("accepts" if ref["accepted"] else "rejects"), ("accepts" if cb["accepted"] else "rejects")


def meaning_differences(case: Case, ref: dict[str, Any], cb: dict[str, Any]) -> list[str]:
    """What both built, field by field; only fields that mean the same in both are compared."""
    fields = ["eth0.addrs", "eth0.mtu", "routes", "bridge", "bridge_addrs", "promisc", "dns"]
    if not case.publishes_ports:
        fields.append("hairpin")  # cni-bridge turns hairpin on for a port-publishing container
    if case.touches_nat:
        fields += ["dnat", "masq"]
    ref_mac = (ref.get("eth0") or {}).get("mac", "")
    requested = (case.text + (case.cni_args or "")).lower().replace("-", ":")
    if ref_mac and ref_mac in requested:
        fields.append("eth0.mac")
    differences = []
    for field in fields:
        ref_value, cb_value = pick(ref, field), pick(cb, field)
        if ref_value != cb_value:
            differences.append(f"{field}: reference {ref_value!r}, cni-bridge {cb_value!r}")
    return differences


def pick(seen: dict[str, Any], dotted: str) -> Any:
    value: Any = seen
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def test_corpus_size_and_ids() -> None:
    assert len(CASES) >= 200
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_acceptance_and_meaning(case: Case, outcomes: dict[str, dict[str, Any]],
                                     listed_differences: set[str]) -> None:
    answer = outcomes[case.id]
    ref, cb = answer["ref"], answer["cb"]
    ref_verdict, cb_verdict = verdicts(answer)
    if cb["accepted"]:
        assert cb["del"]["rc"] == 0, f"{case.id}: cni-bridge's DEL after its ADD failed: {describe(cb, 'del')}"
    differences = []
    if ref_verdict != cb_verdict:
        differences.append(f"reference {ref_verdict} ({describe(ref, 'bridge_add', 'portmap_add')}), "
                           f"cni-bridge {cb_verdict} ({describe(cb, 'add')})")
    elif ref["accepted"]:
        differences += meaning_differences(case, ref["seen"], cb["seen"])
    if case.differs is None:
        assert not differences, f"{case.id}: " + " | ".join(differences)
        return
    assert case.differs in listed_differences, (
        f"{case.id} is marked differs={case.differs!r}, which README.md does not list under {SECTION!r}"
        + (f"; observed: {' | '.join(differences)}" if differences else ""))
    assert differences, f"{case.id} is marked differs={case.differs!r} but both sides agree: drop the marker"
