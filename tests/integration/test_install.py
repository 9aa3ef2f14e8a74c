"""`./build.sh install` and `uninstall`, into test-owned directories (--prefix and the environment).
The installed plugin extracts its bundle into a test-owned cache (CNI_BRIDGE_CACHE_DIR)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.plugin import REPO, requires_plugin

pytestmark = [pytest.mark.integration, requires_plugin]

SHIPPED = os.path.join(REPO, "conf", "10-cni-bridge.conflist")
BUILT = os.path.join(REPO, "dist", "cni-bridge")  # what build.sh installs


@pytest.fixture
def prefix() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="cbt-install-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def build_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CNI_BIN_DIR", "CNI_CONF_DIR", "CNI_RELOAD_HOOKS_ROOT")}
    env = dict(env or {})
    if "--prefix" not in args and "CNI_BIN_DIR" in env:
        # Never the host's firewall managers: reload hooks are looked for beside the test's directories.
        env.setdefault("CNI_RELOAD_HOOKS_ROOT", os.path.dirname(env["CNI_BIN_DIR"]))
    return subprocess.run([os.path.join(REPO, "build.sh"), *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=600, check=False)


def version_of(executable: str, cache_dir: str) -> dict[str, object]:
    out = subprocess.run([executable], input="{}", env={"CNI_COMMAND": "VERSION", "CNI_BRIDGE_CACHE_DIR": cache_dir},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def same_bytes(first: str, second: str) -> bool:
    with open(first, "rb") as a, open(second, "rb") as b:
        return a.read() == b.read()


def test_install_with_prefix_then_uninstall(prefix: str) -> None:
    r = build_sh("install", "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    bin_dir, conf_dir = f"{prefix}/opt/cni/bin", f"{prefix}/etc/cni/net.d"
    plugin = os.path.join(bin_dir, "cni-bridge")
    # One regular file, the built one: it works wherever the directory is moved or copied.
    assert os.listdir(bin_dir) == ["cni-bridge"] and not os.path.islink(plugin) and same_bytes(plugin, BUILT)
    assert "1.1.0" in version_of(plugin, os.path.join(prefix, "cache"))["supportedVersions"]  # type: ignore[operator]
    with open(SHIPPED, "rb") as a, open(os.path.join(conf_dir, "10-cni-bridge.conflist"), "rb") as b:
        assert a.read() == b.read()

    inode = os.stat(plugin).st_ino
    again = build_sh("install", "--prefix", prefix)  # idempotent
    assert again.returncode == 0 and "already the shipped one" in again.stderr and ": unchanged (" in again.stderr
    assert os.listdir(bin_dir) == ["cni-bridge"] and os.stat(plugin).st_ino == inode

    r = build_sh("uninstall", "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    assert os.listdir(bin_dir) == [] and os.listdir(conf_dir) == []


def test_an_existing_network_list_is_never_overwritten_and_survives_uninstall(prefix: str) -> None:
    bin_dir, conf_dir = f"{prefix}/plugins", f"{prefix}/netd"
    os.makedirs(conf_dir)
    mine = os.path.join(conf_dir, "10-cni-bridge.conflist")
    with open(mine, "w") as f:
        f.write('{"name": "mine"}\n')
    env = {"CNI_BIN_DIR": bin_dir, "CNI_CONF_DIR": conf_dir}
    r = build_sh("install", env=env)
    assert r.returncode == 0, r.stderr
    assert f"skipped {mine}" in r.stderr
    assert open(mine).read() == '{"name": "mine"}\n'
    assert os.access(os.path.join(bin_dir, "cni-bridge"), os.X_OK)

    r = build_sh("uninstall", env=env)
    assert r.returncode == 0, r.stderr
    assert f"left {mine}" in r.stderr and os.path.exists(mine)
    assert not os.path.lexists(os.path.join(bin_dir, "cni-bridge"))


def test_install_refuses_to_replace_a_foreign_executable(prefix: str) -> None:
    bin_dir = os.path.join(prefix, "bin")
    os.makedirs(bin_dir)
    foreign = os.path.join(bin_dir, "cni-bridge")
    with open(foreign, "w") as f:
        f.write("#!/bin/sh\n")
    r = build_sh("install", env={"CNI_BIN_DIR": bin_dir, "CNI_CONF_DIR": os.path.join(prefix, "netd")})
    assert r.returncode != 0 and "not ours" in r.stderr
    assert open(foreign).read() == "#!/bin/sh\n"


def test_an_install_of_the_older_layout_is_replaced_by_the_single_file(prefix: str) -> None:
    """Before the single file: bundle directories cni-bridge-<hash>.d/ and a symlink into one.
    The symlink's bundle stays for plugins started through it just before (removed by the next
    upgrade or by uninstall), the others go."""
    bin_dir = os.path.join(prefix, "bin")
    env = {"CNI_BIN_DIR": bin_dir, "CNI_CONF_DIR": os.path.join(prefix, "netd")}
    bundle = os.path.join(REPO, "dist", "cni-bridge.d")
    for old in ("cni-bridge-000000000000.d", "cni-bridge-111111111111.d"):
        shutil.copytree(bundle, os.path.join(bin_dir, old), symlinks=True)
    os.symlink("cni-bridge-111111111111.d/cni-bridge", os.path.join(bin_dir, "cni-bridge"))

    r = build_sh("install", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(bin_dir)) == ["cni-bridge", "cni-bridge-111111111111.d"]
    assert same_bytes(os.path.join(bin_dir, "cni-bridge"), BUILT)
    assert "(replaced the symlink into cni-bridge-111111111111.d, kept until the next upgrade); " \
           "removed cni-bridge-000000000000.d" in r.stderr

    assert build_sh("uninstall", env=env).returncode == 0
    assert os.listdir(bin_dir) == []


def test_reload_hooks_are_installed_only_where_their_manager_is(prefix: str) -> None:
    # nftables and netfilter-persistent are "installed" in the prefix, firewalld is not.
    os.makedirs(f"{prefix}/lib/systemd/system")
    open(f"{prefix}/lib/systemd/system/nftables.service", "w").close()
    os.makedirs(f"{prefix}/usr/share/netfilter-persistent/plugins.d")
    r = build_sh("install", "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    dropin = f"{prefix}/etc/systemd/system/nftables.service.d/cni-bridge-restore.conf"
    plugin = f"{prefix}/usr/share/netfilter-persistent/plugins.d/90-cni-bridge"
    text = open(dropin).read()
    assert "ExecStartPost=-/opt/cni/bin/cni-bridge restore" in text and "ExecReload=-/opt/cni/bin/cni-bridge restore" in text
    assert os.access(plugin, os.X_OK) and "/opt/cni/bin/cni-bridge restore" in open(plugin).read()
    assert not os.path.exists(f"{prefix}/etc/systemd/system/cni-bridge-firewalld-reload.service")
    r = build_sh("uninstall", "--prefix", prefix)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(dropin) and not os.path.exists(plugin)
