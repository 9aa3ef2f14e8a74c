"""dist/cni-bridge as one file, the real bundle in it, inside throwaway node namespaces.

Every start names a bundle cache of the test (CNI_BRIDGE_CACHE_DIR), except the one that shows
the built-in default, which runs in a private mount namespace with a tmpfs over /var/lib: the
host's cache is never written. Read-only plugin directories and full disks are real mounts in
private mount namespaces (a read-only bind mount, a tmpfs too small for the bundle).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cni_bridge.network.naming import host_veth_name
from tests.onefile_builds import build_marker, bundle_name, make_builds
from tests.plugin import BIN, BUILT, PATH, Node, host_local, netconf, node, requires_plugin, token  # noqa: F401
from tests.polling import blocked_reading_stdin, wait_for

pytestmark = [pytest.mark.integration, requires_plugin]

NOTE = "extracted the bundle into"
DAY = 24 * 3600


@pytest.fixture(scope="module")
def builds() -> Iterator[dict[str, str]]:
    """Two other builds, "a" and "b": the real bundle with a marker file each."""
    root = tempfile.mkdtemp(prefix="cbt-builds-")
    try:
        yield make_builds(BUILT, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cni_env(cache: str, command: str, **extra: str) -> dict[str, str]:
    return {"PATH": PATH, "CNI_BRIDGE_CACHE_DIR": cache, "CNI_COMMAND": command, **extra}


def start(node: Node, executable: str, env: dict[str, str], stdin: bytes = b"{}",
          wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    """The executable in the node namespace (through `wrapper`, e.g. a mount namespace)."""
    return subprocess.run(["ip", "netns", "exec", node.name, *wrapper, executable], input=stdin, env=env,
                          capture_output=True, timeout=120, check=False)


def version_works(proc: subprocess.CompletedProcess[Any]) -> bool:
    try:
        return proc.returncode == 0 and "1.1.0" in json.loads(proc.stdout)["supportedVersions"]
    except (ValueError, KeyError, TypeError):
        return False


def notes(*procs: subprocess.CompletedProcess[Any]) -> int:
    """How many of these starts extracted the bundle."""
    return sum(proc.stderr.decode().count(NOTE) for proc in procs)


def extractions(cache: str) -> list[str]:
    return sorted(e for e in os.listdir(cache) if not e.startswith("."))


def temporaries(cache: str) -> list[str]:
    return sorted(e for e in os.listdir(cache) if e.startswith((".tmp-", ".old-")))


def conf_for(node: Node) -> dict[str, Any]:
    return netconf(node.net_name(), node.bridge_name(), host_local(node.data_dir(), "10.99.0.0/24"), "1.0.0")


def environment_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return dict(entry.decode().split("=", 1) for entry in handle.read().split(b"\0")[:-1])


def expect_veth(node: Node, conf: dict[str, Any], cid: str) -> None:
    """Name the host veth an ADD will create, for the node fixture's leak check."""
    node.host_veths.add(host_veth_name(conf["name"], cid, "eth0"))


def adding(node: Node, executable: str, env: dict[str, str], cwd: str | None = None) -> subprocess.Popen[bytes]:
    """ADD started as a runtime starts it; returns once the plugin waits for its config on stdin."""
    plugin = subprocess.Popen(["ip", "netns", "exec", node.name, executable], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    wait_for("the plugin to wait for its config", lambda: blocked_reading_stdin(plugin.pid), timeout=30)
    return plugin


def finish(plugin: subprocess.Popen[bytes], stdin: bytes) -> tuple[int, bytes, bytes]:
    try:
        out, err = plugin.communicate(stdin, timeout=60)
    finally:
        if plugin.poll() is None:
            plugin.kill()
            plugin.wait()
    return plugin.returncode, out, err


# --- anywhere, and everything passed through --------------------------------------------------

def test_a_copy_in_any_directory_extracts_once_and_runs_add_and_del(node: Node) -> None:
    plugin_dir = os.path.join(node.temp_dir(), "some where", "plugins")
    os.makedirs(plugin_dir)
    subprocess.run(["cp", BIN, plugin_dir], check=True)  # what DaemonSets, packagers and people do
    copy, cache = os.path.join(plugin_dir, "cni-bridge"), os.path.join(node.temp_dir(), "bundles")

    first, second = (start(node, copy, cni_env(cache, "VERSION")) for _ in range(2))
    assert version_works(first) and version_works(second), (first, second)
    assert (notes(first), notes(second)) == (1, 0)
    assert extractions(cache) == [bundle_name(copy)] and temporaries(cache) == []

    # A real ADD: what it runs, with which environment, directory and stdin.
    conf, container, cid = conf_for(node), node.add_container(), f"ctr-{token()}"
    env = cni_env(cache, "ADD", CNI_CONTAINERID=cid, CNI_NETNS=container.path, CNI_IFNAME="eth0",
                  CNI_PATH="/usr/lib/cni", CBT_ODD="two words\n'quoted' $HOME \\")
    work = node.temp_dir()
    bundle_executable = os.path.join(cache, bundle_name(copy), "cni-bridge")
    # What the bundle's executable sees when started directly (its bootloader adds variables)...
    direct = adding(node, bundle_executable, env, cwd=work)
    direct_env = environment_of(direct.pid)
    finish(direct, b"")
    # ...and through the launcher: the same, and PWD, which /bin/sh sets (to the same directory).
    expect_veth(node, conf, cid)
    plugin = adding(node, copy, env, cwd=work)
    assert os.readlink(f"/proc/{plugin.pid}/exe") == bundle_executable
    assert os.readlink(f"/proc/{plugin.pid}/cwd") == work
    assert environment_of(plugin.pid) == {**direct_env, "PWD": work} and direct_env.items() >= env.items()
    rc, out, err = finish(plugin, json.dumps({**conf, "stateDir": node.state_dir}).encode())
    assert rc == 0, (out, err)
    result = json.loads(out)
    assert sorted(node.addrs("eth0", container)) == sorted(ip["address"] for ip in result["ips"])

    node.ok("DEL", conf, cid, container.path, executable=copy, extra_env={"CNI_BRIDGE_CACHE_DIR": cache})
    assert node.link("eth0", container) is None
    assert [link for link in node.links() if link.get("master") == conf["bridge"]] == []

    # Arguments too (the runner): one with a space arrives as one.
    runner = subprocess.run(["ip", "netns", "exec", node.name, copy, "no such command"], env=cni_env(cache, ""),
                            capture_output=True, text=True, timeout=60, check=False)
    assert runner.returncode == 2 and "unknown command 'no such command'" in runner.stderr


def test_a_start_execs_the_bundle_once_and_the_bootloader_does_not_restart(node: Node) -> None:
    """PyInstaller's bootloader restarts itself (execve) to apply LD_LIBRARY_PATH unless the
    launcher set it: one exec of the bundle per start, the launcher's."""
    cache = os.path.join(node.temp_dir(), "bundles")
    trace = os.path.join(node.temp_dir(), "execs")
    assert version_works(start(node, BIN, cni_env(cache, "VERSION")))  # the first start extracts
    proc = start(node, BIN, cni_env(cache, "VERSION"), wrapper=("strace", "-f", "-qq", "-e", "trace=execve", "-o", trace))
    assert proc.returncode == 0 and "1.1.0" in proc.stdout.decode(), proc.stderr
    with open(trace, encoding="utf-8") as handle:
        execs = [line for line in handle if "execve(" in line and "= 0" in line]
    bundle_executable = os.path.join(cache, bundle_name(BIN), "cni-bridge")
    assert [e.split('"')[1] for e in execs] == [BIN, bundle_executable], execs


def test_the_built_in_cache_is_var_lib_cni_bridge_bundles(node: Node) -> None:
    """The built file itself, no variable; /var/lib is a tmpfs in a private mount namespace."""
    listing = os.path.join(node.temp_dir(), "listing")
    script = ('mount -t tmpfs cbt-var-lib /var/lib && "$1" && ls -A /var/lib/cni-bridge/bundles > "$2"')
    proc = subprocess.run(["ip", "netns", "exec", node.name, "unshare", "--mount", "--propagation", "private",
                           "sh", "-c", script, "sh", BUILT, listing], input=b"{}",
                          env={"PATH": PATH, "CNI_COMMAND": "VERSION"}, capture_output=True, timeout=120, check=False)
    assert version_works(proc) and notes(proc) == 1, proc
    with open(listing, encoding="utf-8") as handle:
        assert handle.read().split() == [".lock", bundle_name(BUILT)]


# --- many first starts at once ------------------------------------------------------------------

class PartialWatch(threading.Thread):
    """Until stopped: every process whose executable lies in an unfinished extraction."""

    def __init__(self, cache: str) -> None:
        super().__init__(daemon=True)
        self.prefix = os.path.join(cache, ".tmp-")
        self.stopped = threading.Event()
        self.seen: list[str] = []
        self.rounds = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            for pid in os.listdir("/proc"):
                try:
                    exe = os.readlink(f"/proc/{pid}/exe")
                except OSError:
                    continue
                if exe.startswith(self.prefix):
                    self.seen.append(exe)
            self.rounds += 1


SYNC_WITHOUT_F = """#!/bin/sh
# A sync that knows no -f, as older BusyBox builds; it logs how it was called.
printf '%s\\n' "$*" >> "$SYNC_LOG"
case $1 in -f) echo "sync: invalid option -- 'f'" >&2; exit 1 ;; esac
exec /usr/bin/sync "$@"
"""


def test_a_sync_without_f_syncs_every_file_instead(node: Node) -> None:
    """The first start syncs the extraction with one `sync -f` (syncfs); where sync has no -f,
    it syncs each file before the rename, and the start still succeeds."""
    tools, cache = node.temp_dir(), os.path.join(node.temp_dir(), "bundles")
    log = os.path.join(node.temp_dir(), "sync.log")
    with open(os.path.join(tools, "sync"), "w", encoding="utf-8") as handle:
        handle.write(SYNC_WITHOUT_F)
    os.chmod(os.path.join(tools, "sync"), 0o755)
    env = {**cni_env(cache, "VERSION"), "PATH": f"{tools}:{PATH}", "SYNC_LOG": log}
    first = start(node, BIN, env)
    assert version_works(first) and notes(first) == 1, first
    assert extractions(cache) == [bundle_name(BIN)] and temporaries(cache) == []
    with open(log, encoding="utf-8") as handle:
        calls = handle.read().splitlines()
    # "-f -- TEMP" refused, then "-- PATH PATH ...": every file and directory of the
    # extraction, under its temporary name (cache/.tmp-NAME.PID), before the rename.
    assert calls[0].startswith("-f -- ") and len(calls) > 1, calls
    synced = {os.path.relpath(path, cache).partition("/")[2] for call in calls[1:] for path in call.split()[1:]}
    extraction = os.path.join(cache, bundle_name(BIN))
    expected = {os.path.relpath(os.path.join(root, name), extraction)
                for root, dirs, files in os.walk(extraction) for name in dirs + files}
    assert len(expected) > 500 and expected <= synced, sorted(expected - synced)[:5]


def test_twenty_concurrent_first_starts_extract_once_and_never_run_a_partial_bundle(node: Node) -> None:
    cache = os.path.join(node.temp_dir(), "bundles")
    watch = PartialWatch(cache)
    watch.start()
    try:
        starts = [subprocess.Popen(["ip", "netns", "exec", node.name, BIN], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cni_env(cache, "VERSION"))
                  for _ in range(20)]
        outputs = [p.communicate(b"{}", timeout=120) for p in starts]
        done = [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(starts, outputs)]
    finally:
        watch.stopped.set()
        watch.join(timeout=30)
    assert [version_works(proc) for proc in done] == [True] * 20, [p.stderr for p in done if not version_works(p)]
    assert notes(*done) == 1  # one extraction; the others waited for it and ran it
    assert extractions(cache) == [bundle_name(BIN)] and temporaries(cache) == []
    assert watch.seen == [] and watch.rounds > 0


def test_a_first_start_killed_mid_extraction_leaves_nothing_that_runs(node: Node) -> None:
    for _attempt in range(5):
        cache = os.path.join(node.temp_dir(), "bundles")
        first = subprocess.Popen(["ip", "netns", "exec", node.name, BIN], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cni_env(cache, "VERSION"),
                                 start_new_session=True)
        deadline = time.monotonic() + 30
        while first.poll() is None and time.monotonic() < deadline:
            if os.path.isdir(cache) and temporaries(cache):
                os.killpg(first.pid, signal.SIGKILL)  # the launcher, tail and tar: a power cut for them
                break
            time.sleep(0.0005)
        first.communicate(timeout=60)
        if first.returncode == -signal.SIGKILL:
            break
    else:
        pytest.fail("the extraction always finished before it could be killed")
    assert extractions(cache) == [] and len(temporaries(cache)) == 1  # half an extraction, under a temp name

    after = start(node, BIN, cni_env(cache, "VERSION"))
    assert version_works(after) and notes(after) == 1, after
    assert extractions(cache) == [bundle_name(BIN)] and temporaries(cache) == []


# --- where it cannot write --------------------------------------------------------------------

READ_ONLY = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 99\n'
             'if touch "$1/probe" 2>/dev/null; then exit 98; fi\n'
             'shift; exec "$@"')


def test_a_plugin_directory_on_a_read_only_mount(node: Node) -> None:
    plugin_dir, cache = node.temp_dir(), os.path.join(node.temp_dir(), "bundles")
    shutil.copy(BIN, plugin_dir)
    plugin = os.path.join(plugin_dir, "cni-bridge")
    read_only = ("unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY, "sh", plugin_dir)

    first = start(node, plugin, cni_env(cache, "VERSION"), wrapper=read_only)
    assert version_works(first) and notes(first) == 1, first
    conf, container, cid = conf_for(node), node.add_container(), f"ctr-{token()}"
    stdin = json.dumps({**conf, "stateDir": node.state_dir}).encode()
    cni = {"CNI_CONTAINERID": cid, "CNI_NETNS": container.path, "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni"}
    expect_veth(node, conf, cid)
    add = start(node, plugin, cni_env(cache, "ADD", **cni), stdin, wrapper=read_only)
    assert add.returncode == 0 and json.loads(add.stdout)["ips"], add
    delete = start(node, plugin, cni_env(cache, "DEL", **cni), stdin, wrapper=read_only)
    assert delete.returncode == 0 and delete.stdout == b"", delete
    assert node.link("eth0", container) is None
    assert os.listdir(plugin_dir) == ["cni-bridge"] and extractions(cache) == [bundle_name(plugin)]


def payload_size_mb() -> str:
    """The bundle's size as the launcher states it (its header's payload_size_mb=N)."""
    with open(BIN, "rb") as handle:
        head = handle.read(4096).decode("ascii", "replace")
    return head.split("\npayload_size_mb=", 1)[1].split("\n", 1)[0]


FULL_DISK = ('mount -t tmpfs -o size=4m cbt-full "$1" || exit 99\n'
             '"$3"; status=$?\n'
             'find "$1" -mindepth 1 -printf "%P\\n" > "$2"\n'
             'exit $status')


def test_a_full_disk_gives_a_clear_cni_error_and_leaves_no_partial_extraction(node: Node) -> None:
    mount_point, listing = node.temp_dir(), os.path.join(node.temp_dir(), "listing")
    cache = os.path.join(mount_point, "bundles")
    conf, container, cid = conf_for(node), node.add_container(), f"ctr-{token()}"
    env = cni_env(cache, "ADD", CNI_CONTAINERID=cid, CNI_NETNS=container.path, CNI_IFNAME="eth0",
                  CNI_PATH="/usr/lib/cni")
    proc = subprocess.run(["ip", "netns", "exec", node.name, "unshare", "--mount", "--propagation", "private",
                           "sh", "-c", FULL_DISK, "sh", mount_point, listing, BIN],
                          input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 1, proc
    error = json.loads(proc.stdout)  # one JSON object, nothing else on stdout
    assert error["code"] == 5 and error["cniVersion"] == "1.0.0", error
    assert error["msg"] == f"cannot extract the bundle ({payload_size_mb()} MB) into {cache}", error
    assert "No space left on device" in error["details"], error
    assert b"Traceback" not in proc.stderr and b"No space left on device" in proc.stderr
    with open(listing, encoding="utf-8") as handle:
        assert handle.read().split() == ["bundles", "bundles/.lock"]  # the lock, and no partial extraction
    assert node.link("eth0", container) is None


# --- several builds -----------------------------------------------------------------------------

def test_two_builds_side_by_side_each_run_their_own_extraction(node: Node, builds: dict[str, str]) -> None:
    cache = os.path.join(node.temp_dir(), "bundles")
    root, installed = node.temp_dir(), {}
    for name, plugin_dir in (("a", "opt/cni/bin"), ("b", "usr/lib/cni")):
        os.makedirs(os.path.join(root, plugin_dir))
        installed[name] = shutil.copy(builds[name], os.path.join(root, plugin_dir, "cni-bridge"))
    runs = [start(node, installed[name], cni_env(cache, "VERSION")) for name in "ababab"]
    assert all(version_works(run) for run in runs), runs
    assert [notes(run) for run in runs] == [1, 1, 0, 0, 0, 0]  # never one build's start undoing the other's
    names = {name: bundle_name(installed[name]) for name in "ab"}
    assert names["a"] != names["b"] and extractions(cache) == sorted(names.values())
    assert {name: build_marker(os.path.join(cache, names[name])) for name in "ab"} == {"a": "a", "b": "b"}

    for name in "ab":
        plugin = adding(node, installed[name], cni_env(cache, "ADD", CNI_CONTAINERID="c1", CNI_NETNS="/nonexistent",
                                                        CNI_IFNAME="eth0"))
        exe = os.readlink(f"/proc/{plugin.pid}/exe")
        finish(plugin, b"")  # no config: it refuses and changes nothing
        assert exe == os.path.join(cache, names[name], "cni-bridge")


def age(cache: str, name: str, seconds: float) -> None:
    moment = time.time() - seconds
    os.utime(os.path.join(cache, name, ".last-start"), (moment, moment))


def test_old_extractions_go_unless_a_plugin_runs_from_them(node: Node, builds: dict[str, str]) -> None:
    cache = os.path.join(node.temp_dir(), "bundles")
    a, b, c = builds["a"], builds["b"], BIN
    conf, container, cid = conf_for(node), node.add_container(), f"ctr-{token()}"
    add_env = cni_env(cache, "ADD", CNI_CONTAINERID=cid, CNI_NETNS=container.path, CNI_IFNAME="eth0",
                      CNI_PATH="/usr/lib/cni")
    expect_veth(node, conf, cid)

    assert version_works(start(node, b, cni_env(cache, "VERSION")))
    running = adding(node, b, add_env)  # b runs, waiting for its config...
    try:
        age(cache, bundle_name(b), 2 * DAY)  # ...and was started long ago, as far as the cache knows
        first_c = start(node, c, cni_env(cache, "VERSION"))  # c's first start prunes: b stays
        kept = [line for line in first_c.stderr.decode().splitlines() if f"kept {cache}/{bundle_name(b)}:" in line]
        assert version_works(first_c) and len(kept) == 1 and str(running.pid) in kept[0], first_c
        age(cache, bundle_name(c), 2 * DAY)
        first_a = start(node, a, cni_env(cache, "VERSION"))  # a's first start prunes: c goes, b stays
        assert version_works(first_a), first_a
        assert f"removed {cache}/{bundle_name(c)}" in first_a.stderr.decode()
        assert extractions(cache) == sorted([bundle_name(a), bundle_name(b)])
    finally:
        rc, out, err = finish(running, json.dumps({**conf, "stateDir": node.state_dir}).encode())
    assert rc == 0, (out, err)  # b's plugin found all its files
    assert sorted(node.addrs("eth0", container)) == sorted(ip["address"] for ip in json.loads(out)["ips"])
    node.ok("DEL", conf, cid, container.path, executable=a, extra_env={"CNI_BRIDGE_CACHE_DIR": cache})

    age(cache, bundle_name(b), 2 * DAY)
    prune = subprocess.run(["ip", "netns", "exec", node.name, a, "prune-bundles", cache], env={"PATH": PATH},
                           capture_output=True, text=True, timeout=60, check=False)
    assert prune.returncode == 0 and prune.stdout == f"cni-bridge prune-bundles: removed {cache}/{bundle_name(b)}\n"
    assert extractions(cache) == [bundle_name(a)] and temporaries(cache) == []
