"""Reservations scoped to a boot, seen through the executable and the reference host-local.

A reboot is played by changing what the plugin reads as the boot ID: each run happens in a
private mount namespace (`unshare --mount`) where a file of ours is bind-mounted over
/proc/sys/kernel/random/boot_id, then enters the node with `ip netns exec` (which keeps the
mount: it remounts /sys, not /proc). Nothing but the boot ID changes, so the kernel's boot time,
the clock and the files' times give the plugin no hint. The warm helper is off: a helper keeps
the mount namespace, and so the boot, it started in.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from cni_bridge.boot import BOOT_ID_PATH
from cni_bridge.ipam.boot_scope import RECORD_NAME
from tests import nstools
from tests.plugin import (
    BIN,
    PATH,
    REF_HOST_LOCAL,
    SKIP_REASON,
    Container,
    Node,
    PluginRun,
    host_local,
    netconf,
    requires_plugin,
    requires_reference,
    reservations,
    store_files,
)

pytestmark = [pytest.mark.integration, requires_plugin]

V4 = "10.208.0.0/24"
V6 = "fd00:208::/64"
# The mount namespace is the runner's own: $0 is the file to mount, the rest is the command.
_BIND_AND_EXEC = f'mount --bind "$0" {BOOT_ID_PATH} && exec "$@"'


class BootNode(Node):
    """A node whose plugin runs see the boot ID last given to ``boot`` (the real one before)."""

    def __init__(self) -> None:
        super().__init__("off")
        self._boot_file: str | None = None

    def boot(self, content: str) -> str:
        """From now on, runs see ``content`` as the boot ID; returns it."""
        path = os.path.join(self.temp_dir(), "boot_id")
        with open(path, "w", encoding="ascii") as f:
            f.write(content)
        self._boot_file = path
        return content

    def new_boot(self) -> str:
        return self.boot(f"{uuid.uuid4()}\n").strip()

    def launcher(self, env: dict[str, str]) -> list[str]:
        env["CNI_BRIDGE_HELPER"] = "0"
        inner = super().launcher(env)
        if self._boot_file is None:
            return inner
        return ["unshare", "--mount", "sh", "-c", _BIND_AND_EXEC, self._boot_file, *inner]


@pytest.fixture
def node() -> Iterator[BootNode]:
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    n = BootNode()
    try:
        yield n
    finally:
        n.cleanup()


def gc_conf(conf: dict[str, Any], *valid: str) -> dict[str, Any]:
    return {**conf, "cni.dev/valid-attachments": [{"containerID": cid, "ifname": "eth0"} for cid in valid]}


def addresses(result: Any) -> list[str]:
    return [ip["address"].split("/")[0] for ip in result["ips"]]


def held(conf: dict[str, Any]) -> dict[str, str]:
    """{ip: container ID} of the store."""
    return {ip: content.split("\r\n")[0] for ip, content in reservations(conf["ipam"]["dataDir"], conf["name"]).items()}


def record_path(conf: dict[str, Any]) -> str:
    return os.path.join(conf["ipam"]["dataDir"], conf["name"], RECORD_NAME)


def firewall_records(node: Node) -> list[str]:
    directory = os.path.join(node.state_dir, "attachments")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def ref(node: Node, command: str, conf: dict[str, Any], cid: str, c: Container | None = None) -> PluginRun:
    """The reference host-local (it speaks up to 1.0.0) on the same store."""
    return node.run(command, {**conf, "cniVersion": "1.0.0"}, cid, c.path if c else "", "eth0",
                    executable=REF_HOST_LOCAL)


def ref_add(node: Node, conf: dict[str, Any], cid: str) -> list[str]:
    r = ref(node, "ADD", conf, cid, node.add_container())
    assert r.rc == 0, r
    return addresses(r.out)


def new_conf(node: Node, *ranges: Any, **extra: Any) -> dict[str, Any]:
    return netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), *(ranges or (V4, V6))),
                   isGateway=True, ipMasq=True, **extra)


def test_add_of_a_later_boot_releases_the_earlier_boots_reservations(node: BootNode) -> None:
    conf = new_conf(node)
    boot_a = node.new_boot()
    first = addresses(node.add(conf, "a-1", node.add_container()))
    assert first == ["10.208.0.2", "fd00:208::2"]
    node.add(conf, "a-2", node.add_container())
    with open(record_path(conf), encoding="ascii") as f:
        assert f.read() == f"cni-bridge boot {boot_a}\n"
    assert len(firewall_records(node)) == 2

    node.new_boot()
    # The address a-1 held in boot A is free again, and nothing of boot A is left.
    result = node.add(conf, "b-1", node.add_container(), cni_args=f"IP={first[0]};IgnoreUnknown=1")
    assert addresses(result)[0] == first[0]
    assert set(held(conf).values()) == {"b-1"}, held(conf)
    # The firewall state agrees: boot A's attachment records went with the reservations.
    assert len(firewall_records(node)) == 1


def test_gc_of_a_later_boot_releases_even_listed_attachments(node: BootNode) -> None:
    conf = new_conf(node)
    node.new_boot()
    node.add(conf, "a-1", node.add_container())
    node.add(conf, "a-2", node.add_container())
    node.new_boot()
    # a-1 is listed as valid, yet its container cannot have survived the reboot.
    node.ok("GC", gc_conf(conf, "a-1", "a-2"))
    assert held(conf) == {}


def test_status_of_a_later_boot_finds_the_range_free_again(node: BootNode) -> None:
    small = [{"subnet": "10.208.1.0/24", "rangeStart": "10.208.1.10", "rangeEnd": "10.208.1.11"}]
    conf = new_conf(node, small)
    node.new_boot()
    node.add(conf, "a-1", node.add_container())
    node.add(conf, "a-2", node.add_container())
    r = node.run("STATUS", conf)
    assert r.code == 50, r  # full in boot A
    node.new_boot()
    node.ok("STATUS", conf)
    assert held(conf) == {}
    assert addresses(node.add(conf, "b-1", node.add_container())) == ["10.208.1.10"]


def test_the_same_boot_releases_nothing(node: BootNode) -> None:
    conf = new_conf(node)
    for boot in ("real", "fake"):  # the machine's boot ID, then one of ours
        if boot == "fake":
            node.new_boot()
        node.add(conf, f"{boot}-1", node.add_container())
        node.add(conf, f"{boot}-2", node.add_container())
        node.ok("GC", gc_conf(conf, f"{boot}-1", f"{boot}-2"))
        node.ok("STATUS", conf)
        node.add(conf, f"{boot}-3", node.add_container())
        # In the fake boot, the real boot's are gone, as after a reboot, with their firewall records.
        assert sorted(held(conf).values()) == sorted(f"{boot}-{n}" for n in (1, 1, 2, 2, 3, 3))
        assert len(firewall_records(node)) == 3


@pytest.mark.parametrize("garbage", ["", "\n", "not-a-boot-id\n"], ids=["empty", "newline", "words"])
def test_an_undeterminable_boot_releases_nothing(node: BootNode, garbage: str) -> None:
    conf = new_conf(node)
    boot_a = node.new_boot()
    node.add(conf, "a-1", node.add_container())
    with open(record_path(conf), encoding="ascii") as f:
        record_before = f.read()
    generation = os.path.join(node.state_dir, "generation")
    with open(generation, encoding="ascii") as f:
        generation_before = f.read()

    node.boot(garbage)
    node.add(conf, "u-1", node.add_container())
    node.ok("GC", gc_conf(conf, "a-1", "u-1"))
    node.ok("STATUS", conf)
    assert set(held(conf).values()) == {"a-1", "u-1"}
    # Neither the store's record nor the firewall's generation took the unknown boot for a new one.
    with open(record_path(conf), encoding="ascii") as f:
        assert f.read() == record_before
    with open(generation, encoding="ascii") as f:
        assert f.read() == generation_before
    assert len(firewall_records(node)) == 2

    node.boot(boot_a + "\n")
    node.ok("STATUS", conf)  # boot A again: nothing to release, u-1 is seen to exist in boot A
    assert set(held(conf).values()) == {"a-1", "u-1"}
    assert len(firewall_records(node)) == 2
    node.new_boot()
    node.ok("STATUS", conf)
    assert held(conf) == {}


def test_reservations_made_under_an_unknown_boot_outlive_the_next_boot(node: BootNode) -> None:
    """Made while the boot could not be told and with no record: no later boot can tell them
    from its own, so the first keeps them (and marks them), the one after releases them."""
    conf = new_conf(node)
    node.boot("garbage\n")
    node.add(conf, "u-1", node.add_container())
    assert not os.path.exists(record_path(conf))
    node.new_boot()
    node.ok("GC", gc_conf(conf, "u-1"))
    assert set(held(conf).values()) == {"u-1"}
    node.new_boot()
    node.ok("GC", gc_conf(conf, "u-1"))
    assert held(conf) == {}


@requires_reference
def test_reference_reservations_of_the_new_boot_survive_it(node: BootNode) -> None:
    conf = new_conf(node)
    node.new_boot()
    ours_a = addresses(node.add(conf, "ours-a", node.add_container()))
    ref_a = ref_add(node, conf, "ref-a")  # after our call: not known to be boot A's
    node.new_boot()
    ref_b = ref_add(node, conf, "ref-b")  # the reference runs first after the reboot
    assert ref_b[0] not in ours_a + ref_a
    ours_b = addresses(node.add(conf, "ours-b", node.add_container()))
    assert held(conf) == {ref_a[0]: "ref-a", ref_a[1]: "ref-a", ref_b[0]: "ref-b", ref_b[1]: "ref-b",
                          ours_b[0]: "ours-b", ours_b[1]: "ours-b"}
    # More reference reservations in boot B, seen by a GC of boot B.
    ref_b2 = ref_add(node, conf, "ref-b2")
    node.ok("GC", gc_conf(conf, "ref-a", "ref-b", "ref-b2", "ours-b"))
    assert set(held(conf).values()) == {"ref-a", "ref-b", "ref-b2", "ours-b"}
    # In boot C, all of boot B is released; the reference reserves again from where it was.
    node.new_boot()
    node.ok("STATUS", conf)
    assert held(conf) == {}
    assert ref_add(node, conf, "ref-c")


@requires_reference
def test_the_reference_ignores_the_boot_record(node: BootNode) -> None:
    """The same reference operations on two stores that differ only by our record give the
    same answers and leave the same files; the record is never taken, read as an owner or removed."""
    name = node.net_name()
    plain, recorded = (netconf(name, node.bridge_name(), host_local(node.data_dir(), V4, V6), "1.0.0")
                       for _ in range(2))
    boot = node.new_boot()
    for conf in (plain, recorded):
        for cid in ("r-1", "r-2", "r-3"):
            ref_add(node, conf, cid)
    node.ok("GC", gc_conf({**recorded, "cniVersion": "1.1.0"}, "r-1", "r-2", "r-3"))  # writes the record
    record = record_path(recorded)
    with open(record, encoding="ascii") as f:
        content = f.read()
    assert content == f"cni-bridge boot {boot}\n"
    mtime = os.stat(record).st_mtime_ns

    container = node.add_container()  # host-local never enters it

    def both(command: str, cid: str, extra: dict[str, Any] | None = None) -> None:
        outs = []
        for conf in (plain, recorded):
            r = ref(node, command, {**conf, **(extra or {})}, cid, container)
            outs.append((r.rc, r.stdout.replace(conf["ipam"]["dataDir"], "DATA")))
        assert outs[0] == outs[1], outs
        assert reservations(plain["ipam"]["dataDir"], name) == reservations(recorded["ipam"]["dataDir"], name)

    both("ADD", "r-4")
    both("ADD", "r-4")  # duplicate: refused alike
    both("ADD", "r-5", {"args": {"cni": {"ips": ["10.208.0.9"]}}})
    both("DEL", "r-1")
    both("DEL", "r-1")
    both("DEL", boot)  # an ID equal to the boot ID the record names
    both("DEL", "cni-bridge")
    both("DEL", content.strip())  # refused by the reference: a container ID holds no spaces
    both("CHECK", "r-2")
    both("GC", "r-2", {"cni.dev/valid-attachments": [{"containerID": "r-2", "ifname": "eth0"}]})
    extra = set(store_files(recorded["ipam"]["dataDir"], name)) - set(store_files(plain["ipam"]["dataDir"], name))
    assert extra == {RECORD_NAME}
    with open(record, encoding="ascii") as f:
        assert f.read() == content
    assert os.stat(record).st_mtime_ns == mtime


def test_a_stale_reservation_that_cannot_be_released_blocks_nothing(node: BootNode) -> None:
    conf = new_conf(node)
    node.new_boot()
    v4, v6 = addresses(node.add(conf, "a-1", node.add_container()))
    stuck = os.path.join(conf["ipam"]["dataDir"], conf["name"], v4)
    subprocess.run(["chattr", "+i", stuck], check=True)
    try:
        node.new_boot()
        r = node.run("GC", gc_conf(conf, "a-1"))
        assert r.code == 112 and v4 in r.msg, r  # GC says what it could not release ...
        assert held(conf) == {v4: "a-1"}  # ... and released the rest
        node.add(conf, "b-1", node.add_container())  # an ADD of the same boot does not trip over it
    finally:
        subprocess.run(["chattr", "-i", stuck], check=True)
    node.ok("STATUS", conf)
    assert set(held(conf).values()) == {"a-1", "b-1"}
    node.new_boot()  # a boot later it goes
    node.ok("STATUS", conf)
    assert held(conf) == {}


def test_the_runner_forgets_attachments_of_an_earlier_boot(node: BootNode) -> None:
    """The runner's result cache agrees: an entry of an earlier boot does not block an add of the
    same attachment (a bare netns name made again after the reboot), and gc drops it even while a
    namespace of that path exists; neither touches the namespace the path names now."""
    conf_dir, cache_dir, bin_dir = node.temp_dir(), node.temp_dir(), node.temp_dir()
    os.symlink(os.path.realpath(BIN), os.path.join(bin_dir, "cni-bridge"))
    net = node.net_name()
    plugin = new_conf(node)
    with open(os.path.join(conf_dir, f"10-{net}.conflist"), "w", encoding="utf-8") as f:
        json.dump({"cniVersion": "1.1.0", "name": net, "plugins": [{**plugin, "stateDir": node.state_dir}]}, f)
    conf = {**plugin, "name": net}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": PATH, "NETCONFPATH": conf_dir, "CNI_PATH": bin_dir, "CNI_CACHE_DIR": cache_dir}
        return subprocess.run([*node.launcher(env), BIN, *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    web, old = node.add_container(), node.add_container()
    node.new_boot()
    assert run("add", net, web.name, "--container-id", "web").returncode == 0
    assert run("add", net, old.path, "--container-id", "old").returncode == 0
    again = run("add", net, old.path, "--container-id", "old")
    assert again.returncode == 1 and "already attached" in again.stderr, again  # same boot: refused

    node.new_boot()
    r = run("add", net, old.path, "--container-id", "old")
    assert r.returncode == 0, r
    # The reboot took web's namespace; the same name is made again, for something else.
    nstools.delete_netns(web.name)
    subprocess.run(["ip", "netns", "add", web.name], check=True)
    kind = node.add_plain_link("eth0", web)
    r = run("gc", net)
    assert r.returncode == 0 and r.stdout.splitlines()[:2] == ["deleted stale attachment web/eth0",
                                                               "kept attachment old/eth0"], r
    assert sorted(os.listdir(os.path.join(cache_dir, "results"))) == [f"{net}-old-eth0"]
    assert set(held(conf).values()) == {"old"}
    link = node.existing_link("eth0", web)  # the stale DEL did not enter the namespace now at that path
    assert (link.get("linkinfo") or {}).get("info_kind") == kind
