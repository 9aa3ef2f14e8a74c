"""Which firewall backend a configuration gets: the keys (firewallBackend, and the reference
plugins' ipMasqBackend and backend) reconciled by the config model, then "auto" and the
default resolved against the host's tools and the backends already in use on it.

The host is faked: a PATH holding only what a case needs (an iptables-restore that is a
symlink to xtables-nft-multi or xtables-legacy-multi, an nft), and a state directory with
the users of shared resources that backends' attachments would leave.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni_bridge.config.model import build_netconf
from cni_bridge import process
from cni_bridge.errors import INVALID_CONFIG, UNSUPPORTED_FIELD, CniError
from cni_bridge.firewall import backend_for, driver_for
from cni_bridge.firewall.driver import Identity
from cni_bridge.firewall.iptables import tools as iptables
from cni_bridge.firewall.nftables import tools as nftables
from cni_bridge.firewall.state import attachment_key, record_path

pytestmark = pytest.mark.unit


def conf(**keys: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "net1", "type": "cni-bridge", **keys}


@pytest.mark.parametrize(("keys", "chosen"), [
    ({}, ""),
    ({"firewallBackend": "auto"}, "auto"),
    ({"firewallBackend": "nftables"}, "nftables"),
    ({"ipMasqBackend": "nftables"}, "nftables"),
    ({"backend": "nftables"}, "nftables"),
    ({"ipMasqBackend": "nftables", "backend": "nftables", "firewallBackend": "nftables"}, "nftables"),
    ({"ipMasqBackend": "iptables"}, "iptables"),
    ({"firewallBackend": "auto", "backend": "nftables"}, "nftables"),  # auto leaves the choice to whoever makes one
    ({"backend": ""}, ""),  # portmap's unset
])
def test_the_keys_agree_on_one_backend(keys: dict[str, Any], chosen: str) -> None:
    assert build_netconf(conf(**keys), "1.0.0").firewall_backend == chosen


@pytest.mark.parametrize(("keys", "code", "named"), [
    ({"ipMasqBackend": "firewalld"}, UNSUPPORTED_FIELD, "ipMasqBackend"),
    ({"ipMasqBackend": ""}, UNSUPPORTED_FIELD, "ipMasqBackend"),
    ({"backend": "ebtables"}, UNSUPPORTED_FIELD, "backend"),
    ({"firewallBackend": "iptables", "ipMasqBackend": "nftables"}, INVALID_CONFIG, "ipMasqBackend"),
    ({"firewallBackend": "nftables", "backend": "iptables"}, INVALID_CONFIG, "backend"),
    ({"ipMasqBackend": "iptables", "backend": "nftables"}, INVALID_CONFIG, "backend"),
])
def test_unknown_and_contradicting_values_are_refused(keys: dict[str, Any], code: int, named: str) -> None:
    with pytest.raises(CniError) as info:
        build_netconf(conf(**keys), "1.0.0")
    assert info.value.code == code and named in info.value.msg, info.value


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """host(iptables="nft"|"legacy"|"", nft=True): a PATH with those tools and nothing else."""
    def make(iptables_flavour: str = "nft", nft: bool = True) -> None:
        bindir = tmp_path / f"bin-{iptables_flavour}-{nft}"
        bindir.mkdir()
        if iptables_flavour:
            multi = bindir / f"xtables-{iptables_flavour}-multi"
            multi.write_text("#!/bin/sh\n")
            multi.chmod(0o755)
            (bindir / "iptables-restore").symlink_to(multi)
        if nft:
            (bindir / "nft").write_text("#!/bin/sh\n")
            (bindir / "nft").chmod(0o755)
        monkeypatch.setenv("PATH", str(bindir))
        monkeypatch.delenv(iptables.ENV_BACKEND, raising=False)
        monkeypatch.setattr(process, "SYSTEM_DIRS", ())
        monkeypatch.setattr(iptables, "_cache", {})
        monkeypatch.setattr(nftables, "_cache", {})
    return make


def in_use(state_dir: Path, *units: str) -> str:
    """A state directory where attachments use shared resources in these units."""
    for unit in units:
        users = state_dir / "shared" / unit / "table"
        users.mkdir(parents=True)
        (users / "u-0123").touch()
    return str(state_dir)


@pytest.mark.parametrize(("flavour", "nft", "expected"), [
    ("nft", True, "nftables"),       # the firewall already lives in nf_tables
    ("legacy", True, "iptables"),    # x_tables: keep our rules where the host's are
    ("nft", False, "iptables"),      # no nft to run
    ("", True, "nftables"),          # no iptables at all
])
def test_auto_on_a_host_without_attachments(host: Any, tmp_path: Path, flavour: str, nft: bool, expected: str) -> None:
    host(flavour, nft)
    assert backend_for("auto", str(tmp_path / "state")) == expected


@pytest.mark.parametrize(("units", "flavour", "expected"), [
    (("4", "6"), "nft", "iptables"),     # ours use iptables: stay there
    (("inet",), "legacy", "nftables"),   # ours use nftables: stay there
    (("4", "inet"), "nft", "iptables"),  # both (chosen explicitly by other networks): the one every host has
])
def test_auto_follows_the_backend_our_attachments_use(host: Any, tmp_path: Path, units: tuple[str, ...],
                                                      flavour: str, expected: str) -> None:
    host(flavour)
    assert backend_for("auto", in_use(tmp_path / "state", *units)) == expected


@pytest.mark.parametrize(("flavour", "nft", "expected"), [
    ("nft", True, "iptables"),   # the reference plugins' default
    ("", True, "nftables"),      # ... unless only nftables is there
    ("", False, "iptables"),     # nothing at all: iptables, which will say what is missing
])
def test_the_default_is_the_reference_plugins(host: Any, tmp_path: Path, flavour: str, nft: bool,
                                              expected: str) -> None:
    host(flavour, nft)
    assert backend_for("", str(tmp_path)) == expected


def test_an_explicit_choice_is_taken_as_it_is(host: Any, tmp_path: Path) -> None:
    host("legacy", nft=False)
    assert backend_for("nftables", in_use(tmp_path / "state", "4")) == "nftables"
    assert driver_for(build_netconf(conf(ipMasqBackend="nftables", stateDir=str(tmp_path)), "1.0.0")).name == "nftables"


def test_check_of_an_attachment_left_to_auto_uses_the_driver_that_installed_it(host: Any, tmp_path: Path) -> None:
    host("legacy")  # auto would pick iptables now
    state = tmp_path / "state"
    who = Identity("net1", "ctr-1", "eth0")
    record = Path(record_path(str(state), attachment_key(who.network, who.container_id, who.ifname)))
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"format": 2, "driver": "nftables"}))
    netconf = build_netconf(conf(firewallBackend="auto", stateDir=str(state)), "1.0.0")
    assert driver_for(netconf, who).name == "nftables"
    assert driver_for(netconf).name == "iptables"
    assert driver_for(netconf, Identity("net1", "ctr-2", "eth0")).name == "iptables"  # no record: auto decides
    explicit = build_netconf(conf(firewallBackend="iptables", stateDir=str(state)), "1.0.0")
    assert driver_for(explicit, who).name == "iptables"  # CHECK then reports the difference
