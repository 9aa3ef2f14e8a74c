"""The firewall's records and backend choice, without touching iptables."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cni_bridge import process
from cni_bridge.errors import FIREWALL_FAILURE, PORT_CONFLICT, CniError
from cni_bridge.firewall.iptables import scheme, syntax
from cni_bridge.firewall.iptables import tools as iptables
from cni_bridge.firewall.iptables.driver import IptablesDriver
from cni_bridge.firewall.portmap import Claim
from cni_bridge.firewall.state import Attachment, Installed, Store, attachment_key

pytestmark = pytest.mark.unit


def att(cid: str, *claims: Claim) -> Attachment:
    items = (("chain", "nat", "CNIBR-MASQ-1"),
             ("rule", "nat", "POSTROUTING", '-s 10.1.0.2/32 -m comment --comment "x y" -j CNIBR-MASQ-1', False))
    return Attachment("iptables", "n1", cid, "eth0", (Installed("4", items, ("forward",)),), claims)


def test_attachment_record_round_trips(tmp_path: Path) -> None:
    record = att("c1", Claim("tcp", 80, "0.0.0.0"), Claim("udp", 53, "::"))
    with Store(str(tmp_path)) as store:
        assert store.load(record.key) is None
        store.save(record)
        assert store.load(record.key) == record
        assert [key for key, _ in store.attachments()] == [record.key]
        store.forget(record.key)
        assert store.load(record.key) is None
    assert record.key == attachment_key("n1", "c1", "eth0") and len(record.key) == 32


def test_users_are_counted_per_family_and_key(tmp_path: Path) -> None:
    resource = IptablesDriver().shared("hostport", "4")
    with Store(str(tmp_path)) as store:
        assert not store.other_users("4", "hostport", "a")
        store.add_user("4", resource, "a", created=True)
        assert not store.other_users("4", "hostport", "a")
        assert store.other_users("4", "hostport", "b")
        assert not store.other_users("6", "hostport", "b")
        store.add_user("4", resource, "b", created=False)
        assert store.definition("4", "hostport") == resource
        store.drop_user("4", "hostport", "a")
        assert store.other_users("4", "hostport", "a")
        store.drop_user("4", "hostport", "b")
        assert store.users("4", "hostport") == [] and store.definition("4", "hostport") is None
        assert store.shared_resources() == []


def test_claims_conflict_on_same_address_or_wildcard_of_the_family(tmp_path: Path) -> None:
    with Store(str(tmp_path)) as store:
        holder = att("c1", Claim("tcp", 80, "0.0.0.0"), Claim("tcp", 81, "192.0.2.1"))
        store.take_claims(holder.claims, holder)
        me = attachment_key("n1", "c2", "eth0")
        for claim in (Claim("tcp", 80, "0.0.0.0"), Claim("tcp", 80, "192.0.2.9"), Claim("tcp", 81, "0.0.0.0"),
                      Claim("tcp", 81, "192.0.2.1")):
            with pytest.raises(CniError) as info:
                store.check_claims([claim], me)
            assert info.value.code == PORT_CONFLICT
            assert "container c1 (ifname eth0, network n1)" in info.value.msg
        for claim in (Claim("udp", 80, "0.0.0.0"), Claim("tcp", 80, "::"), Claim("tcp", 81, "192.0.2.2"),
                      Claim("tcp", 82, "0.0.0.0")):
            store.check_claims([claim], me)
        store.check_claims(holder.claims, holder.key)  # its own claims are no conflict
        store.take_claims(holder.claims, holder)  # nor is taking them again
        with pytest.raises(CniError):
            store.take_claims([Claim("tcp", 80, "0.0.0.0")], att("c2"))
        store.release_claims(holder.claims, holder.key)
        store.check_claims([Claim("tcp", 80, "0.0.0.0")], me)
        assert store.all_claims() == []


def test_records_of_another_generation_are_discarded(tmp_path: Path) -> None:
    record = att("c1", Claim("tcp", 80, "0.0.0.0"))
    with Store(str(tmp_path)) as store:
        store.save(record)
        store.take_claims(record.claims, record)
        store.add_user("4", IptablesDriver().shared("forward", "4"), record.key, created=True)
    (tmp_path / "generation").write_text("another-boot 1\n")
    with Store(str(tmp_path)) as store:
        assert store.attachments() == []
        assert store.all_claims() == []
        assert store.shared_resources() == []
    with Store(str(tmp_path)) as store:  # and the new generation is kept
        store.save(record)
    with Store(str(tmp_path)) as store:
        assert store.load(record.key) == record


def test_corrupt_record_is_reported(tmp_path: Path) -> None:
    with Store(str(tmp_path)) as store:
        store.save(att("c1"))
    path = next((tmp_path / "attachments").iterdir())
    path.write_text("{not json")
    with Store(str(tmp_path)) as store:
        with pytest.raises(CniError) as info:
            store.load(path.stem)
        assert info.value.code == FIREWALL_FAILURE
        assert store.attachments() == [(path.stem, None)]


def _fake_tools(tmp_path: Path, multi: str) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    target = bindir / multi
    target.write_text("#!/bin/sh\n")
    target.chmod(0o755)
    for name in ("iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save"):
        (bindir / name).symlink_to(target)
    return str(bindir)


@pytest.mark.parametrize(("multi", "expected"), [("xtables-nft-multi", "nft"), ("xtables-legacy-multi", "legacy"),
                                                 ("xtables-multi", "legacy")])
def test_backend_follows_the_iptables_restore_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      multi: str, expected: str) -> None:
    monkeypatch.setenv("PATH", _fake_tools(tmp_path, multi))
    monkeypatch.delenv(iptables.ENV_BACKEND, raising=False)
    monkeypatch.setattr(iptables, "_cache", {})
    assert iptables.backend() == expected


def test_backend_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iptables, "_cache", {})
    monkeypatch.setenv(iptables.ENV_BACKEND, "legacy")
    assert iptables.backend() == "legacy"
    monkeypatch.setenv(iptables.ENV_BACKEND, "nftables")
    with pytest.raises(CniError) as info:
        iptables.backend()
    assert info.value.code == FIREWALL_FAILURE


def test_plain_tool_is_used_when_it_is_the_chosen_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = _fake_tools(tmp_path, "xtables-legacy-multi")
    monkeypatch.setattr(process, "SYSTEM_DIRS", ())
    monkeypatch.setenv("PATH", bindir)
    monkeypatch.setattr(iptables, "_cache", {})
    monkeypatch.setenv(iptables.ENV_BACKEND, "legacy")
    assert iptables.tool(6, "restore") == os.path.join(bindir, "ip6tables-restore")
    monkeypatch.setenv(iptables.ENV_BACKEND, "nft")
    with pytest.raises(CniError) as info:
        iptables.tool(4, "save")
    assert "iptables-nft-save not found" in info.value.msg


def test_failing_restore_names_the_line(tmp_path: Path) -> None:
    batch = "*nat\n:CNIBR-X - [0:0]\n-A CNIBR-X -j NOPE\nCOMMIT\n"
    assert iptables._offending_line("iptables-restore: line 3 failed", batch) == "-A CNIBR-X -j NOPE"
    assert iptables._offending_line("Couldn't load target `NOPE'\n\nError occurred at line: 3\n", batch) == \
        "-A CNIBR-X -j NOPE"
    assert iptables._offending_line("something else", batch) == ""
    tool = tmp_path / "fail"
    tool.write_text("#!/bin/sh\ncat >/dev/null\necho 'iptables-restore: line 3 failed' >&2\nexit 1\n")
    tool.chmod(0o755)
    assert iptables.spawn([str(tool)], batch.encode()) == (1, b"", b"iptables-restore: line 3 failed\n")


def test_absent_parts_of_a_shared_resource() -> None:
    resource = scheme.shared("hostport", 4)
    saved = syntax.parse_save("nat", "*nat\n:PREROUTING ACCEPT [0:0]\n:CNIBR-HOSTPORT-DNAT - [0:0]\n"
                                     f"{resource.rules[0].saved}\nCOMMIT\n")
    assert syntax.absent([saved], resource.chains, resource.rules) == ([], [resource.rules[1]])
    assert syntax.absent([], resource.chains, resource.rules) == (list(resource.chains), list(resource.rules))


def test_debris_of_a_write_killed_halfway_goes_with_the_file(tmp_path: Path) -> None:
    """A writer SIGKILLed between creating the temp file and renaming it leaves `<file>.tmp`:
    the removal of the file takes it too, so the state directory ends up empty."""
    record = att("c1")
    resource = IptablesDriver().shared("forward", "4")
    with Store(str(tmp_path)) as store:
        store.save(record)
        store.add_user("4", resource, record.key, created=True)
        (tmp_path / "attachments" / f"{record.key}.json.tmp").write_text("{half")
        (tmp_path / "shared" / "4" / "forward" / "def.json.tmp").write_text("{half")
        assert [key for key, _ in store.attachments()] == [record.key]
        assert store.users("4", "forward") == [record.key]
        store.drop_user("4", "forward", record.key)
        store.forget(record.key)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["generation", "lock"]
    assert not (tmp_path / "shared" / "4" / "forward").exists()
