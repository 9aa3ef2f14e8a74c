"""`cni-bridge install-cni` (cni_bridge/install_cni.py) in-process: options and variables,
input checks, the network list it writes, the placement of a small single file, idempotence.
No root needed; everything happens in pytest's tmp_path. tests/integration/test_install_cni.py
runs the built executable."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from cni_bridge import install_cni, onefile
from cni_bridge.runner import cli

pytestmark = pytest.mark.unit

DUAL = ["--pod-cidr", "10.244.3.0/24,fd00:10:244:3::/64", "--cluster-cidr", "10.244.0.0/16",
        "--cluster-cidr", "fd00:10:244::/56"]


def make_single_file(path: Path, version: str = "one") -> Path:
    """A real single file (launcher and payload) whose stand-in bundle is an executable that
    prints `version` and a file in _internal."""
    bundle = path.parent / f"{path.name}.d"
    (bundle / "_internal").mkdir(parents=True)  # and path's directory
    executable = bundle / "cni-bridge"
    executable.write_text(f"#!/bin/sh\necho {version}\n")
    executable.chmod(0o755)
    (bundle / "_internal" / "lib.txt").write_text(version)
    onefile.pack(str(bundle), str(path), str(path.parent / "cache"))
    return path


def bundle_name(single_file: Path) -> str:
    header = onefile.read_header(str(single_file))
    assert header is not None
    return header.bundle_name


class Installer:
    """install_cni.run with this test's directories; the result and what it printed."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path
        self.executable = make_single_file(tmp_path / "build" / "cni-bridge")
        self.bin_dir = tmp_path / "opt" / "cni" / "bin"
        self.conf_dir = tmp_path / "etc" / "cni" / "net.d"

    def run(self, *args: str, environ: dict[str, str] | None = None, executable: Path | None = None,
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
        base = ["--executable", str(executable or self.executable), "--bin-dir", str(self.bin_dir),
                "--conf-dir", str(self.conf_dir)]
        code = install_cni.run([*base, *args], environ or {})
        out, err = capsys.readouterr()
        return code, out, err

    @property
    def conflist(self) -> Path:
        return self.conf_dir / "10-cni-bridge.conflist"

    def network_list(self) -> Any:
        return json.loads(self.conflist.read_text())

    @property
    def plugin(self) -> Path:
        return self.bin_dir / "cni-bridge"

    def old_bundles(self) -> list[str]:
        return sorted(e for e in os.listdir(self.bin_dir) if e.startswith("cni-bridge-"))

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """(inode, mtime_ns) of everything under the two directories, links not followed."""
        seen = {}
        for top in (self.bin_dir, self.conf_dir):
            for root, dirs, files in os.walk(top):
                for name in [*dirs, *files, ""]:
                    st = os.lstat(os.path.join(root, name))
                    seen[os.path.join(root, name)] = (st.st_ino, st.st_mtime_ns)
        return seen


@pytest.fixture
def installer(tmp_path: Path) -> Installer:
    return Installer(tmp_path)


# --- the network list ---------------------------------------------------------------------

def test_a_dual_stack_node_gets_one_range_set_per_pod_cidr(installer: Installer,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = installer.run(*DUAL, capsys=capsys)
    assert code == 0, err
    doc = installer.network_list()
    assert doc["cniVersion"] == "1.0.0" and doc["cniVersions"] == ["1.0.0", "1.1.0"]
    assert doc["name"] == "cni-bridge" and len(doc["plugins"]) == 1
    plugin = doc["plugins"][0]
    assert plugin["type"] == "cni-bridge" and plugin["bridge"] == "cnibr0"
    assert plugin["isGateway"] is plugin["isDefaultGateway"] is plugin["ipMasq"] is plugin["hairpinMode"] is True
    assert plugin["ipMasqExclude"] == ["10.244.0.0/16", "fd00:10:244::/56"]
    assert plugin["capabilities"] == {"portMappings": True}
    assert plugin["ipam"] == {"type": "host-local", "dataDir": "/var/lib/cni/networks", "ranges": [
        [{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}],
        [{"subnet": "fd00:10:244:3::/64", "gateway": "fd00:10:244:3::1"}]]}
    assert "mtu" not in plugin  # left to the plugin: the MTU of the default route's link
    assert stat.S_IMODE(installer.conflist.stat().st_mode) == 0o644
    assert f"{installer.conflist}: written (network cni-bridge, pod CIDRs 10.244.3.0/24, fd00:10:244:3::/64" in out


def test_a_single_stack_ipv6_node(installer: Installer, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = installer.run("--pod-cidr", "fd00:10:244:3::/64", "--cluster-cidr", "fd00:10:244::/56,10.244.0.0/16",
                                 capsys=capsys)
    assert code == 0, err
    plugin = installer.network_list()["plugins"][0]
    assert plugin["ipam"]["ranges"] == [[{"subnet": "fd00:10:244:3::/64", "gateway": "fd00:10:244:3::1"}]]
    assert plugin["ipMasqExclude"] == ["fd00:10:244::/56", "10.244.0.0/16"]


def test_variables_are_read_and_options_win_over_them(installer: Installer,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"POD_CIDRS": "10.244.3.0/24", "CLUSTER_CIDRS": "10.244.0.0/16", "CNI_CONF_NAME": "20-k8s.conflist",
               "CNI_NETWORK_NAME": "pods", "CNI_BRIDGE_NAME": "podbr0", "CNI_MTU": "1400",
               "CNI_BIN_DIR": "/nonexistent-bin", "CNI_CONF_DIR": "/nonexistent-conf"}
    code, _, err = installer.run("--network-name", "k8s", environ=environ, capsys=capsys)
    assert code == 0, err  # --bin-dir and --conf-dir given by the test win over the variables
    doc = json.loads((installer.conf_dir / "20-k8s.conflist").read_text())
    assert doc["name"] == "k8s"
    assert doc["plugins"][0]["bridge"] == "podbr0" and doc["plugins"][0]["mtu"] == 1400
    assert doc["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]]


def test_a_changed_pod_cidr_replaces_the_list(installer: Installer, capsys: pytest.CaptureFixture[str]) -> None:
    assert installer.run(*DUAL, capsys=capsys)[0] == 0
    code, out, _ = installer.run("--pod-cidr", "10.244.9.0/24", "--cluster-cidr", "10.244.0.0/16", capsys=capsys)
    assert code == 0 and f"{installer.conflist}: replaced" in out
    assert installer.network_list()["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.9.0/24",
                                                                          "gateway": "10.244.9.1"}]]
    assert [e for e in os.listdir(installer.conf_dir) if e.startswith(".")] == []  # no temp file left


def test_the_list_is_written_0644_whatever_the_umask(installer: Installer,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0o077)
    try:
        assert installer.run(*DUAL, capsys=capsys)[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(installer.conflist.stat().st_mode) == 0o644


def test_a_config_that_runtimes_would_pick_first_is_reported(installer: Installer,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    installer.conf_dir.mkdir(parents=True)
    (installer.conf_dir / "05-other.conflist").write_text("{}")
    (installer.conf_dir / "99-later.conflist").write_text("{}")
    code, _, err = installer.run(*DUAL, capsys=capsys)
    assert code == 0
    assert f"warning: {installer.conf_dir}/05-other.conflist sorts before 10-cni-bridge.conflist" in err
    assert "99-later" not in err


# --- idempotence and the executable ------------------------------------------------------------

def test_a_second_run_with_the_same_input_changes_nothing(installer: Installer,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = installer.run(*DUAL, capsys=capsys)
    name = bundle_name(installer.executable)
    assert code == 0 and f"{installer.plugin}: installed {name}" in out
    before = installer.snapshot()
    code, out, err = installer.run(*DUAL, capsys=capsys)
    assert code == 0, err
    assert installer.snapshot() == before
    assert out.splitlines() == [
        f"cni-bridge install-cni: {installer.plugin}: unchanged ({name})",
        f"cni-bridge install-cni: {installer.conflist}: unchanged",
        "cni-bridge install-cni: nothing changed"]


def test_the_plugin_is_a_copy_of_the_single_file_mode_0755_whatever_the_umask(
        installer: Installer, capsys: pytest.CaptureFixture[str]) -> None:
    old = os.umask(0o077)
    try:
        assert installer.run("--executable-only", capsys=capsys)[0] == 0
    finally:
        os.umask(old)
    assert not installer.plugin.is_symlink() and installer.plugin.read_bytes() == installer.executable.read_bytes()
    assert stat.S_IMODE(installer.plugin.stat().st_mode) == 0o755
    assert os.listdir(installer.bin_dir) == ["cni-bridge"]
    assert not installer.conf_dir.exists()  # --executable-only writes no list


def test_an_upgrade_renames_the_new_file_over_the_old_one(installer: Installer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert installer.run("--executable-only", capsys=capsys)[0] == 0
    old_name = bundle_name(installer.executable)
    with open(installer.plugin, "rb") as running:  # as a launcher started just before reads it
        new = make_single_file(tmp_path / "two" / "cni-bridge", "two")
        code, out, err = installer.run("--executable-only", executable=new, capsys=capsys)
        assert code == 0, err
        assert f"{installer.plugin}: installed {bundle_name(new)} (replaced {old_name})" in out
        assert running.read() == installer.executable.read_bytes()  # the old file, whole
    assert installer.plugin.read_bytes() == new.read_bytes()
    assert os.listdir(installer.bin_dir) == ["cni-bridge"]


def test_a_plugin_whose_mode_was_changed_is_put_back(installer: Installer, capsys: pytest.CaptureFixture[str]) -> None:
    installer.run("--executable-only", capsys=capsys)
    installer.plugin.chmod(0o644)
    code, out, _ = installer.run("--executable-only", capsys=capsys)
    assert code == 0 and ": installed " in out and stat.S_IMODE(installer.plugin.stat().st_mode) == 0o755


def old_install(installer: Installer, *names: str) -> None:
    """The layout before the single file: bundle directories and a symlink into the last."""
    for name in names:
        (installer.bin_dir / name / "_internal").mkdir(parents=True)
        (installer.bin_dir / name / "cni-bridge").write_text("#!/bin/sh\n")
    installer.plugin.symlink_to(f"{names[-1]}/cni-bridge")


def test_an_older_install_is_replaced_keeping_its_bundle_until_the_next_upgrade(
        installer: Installer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_install(installer, "cni-bridge-000000000000.d", "cni-bridge-111111111111.d")
    code, out, err = installer.run("--executable-only", capsys=capsys)
    assert code == 0, err
    assert (f"installed {bundle_name(installer.executable)} (replaced the symlink into cni-bridge-111111111111.d, "
            f"kept until the next upgrade); removed cni-bridge-000000000000.d") in out
    assert installer.plugin.read_bytes() == installer.executable.read_bytes()
    # A repeated run (a restarted installer) keeps it: plugins started through the symlink may still run.
    installer.run("--executable-only", capsys=capsys)
    assert installer.old_bundles() == ["cni-bridge-111111111111.d"]
    code, out, _ = installer.run("--executable-only", executable=make_single_file(tmp_path / "two" / "cni-bridge", "two"),
                                 capsys=capsys)
    assert code == 0 and out.rstrip().endswith("; removed cni-bridge-111111111111.d")
    assert installer.old_bundles() == []


def test_leftovers_of_a_killed_installer_are_removed(installer: Installer,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    installer.bin_dir.mkdir(parents=True)
    (installer.bin_dir / ".cni-bridge-0123456789ab.d.tmp").mkdir()  # of the older layout
    (installer.bin_dir / ".cni-bridge.tmp").write_text("half a copy")
    installer.conf_dir.mkdir(parents=True)
    (installer.conf_dir / ".10-cni-bridge.conflist.tmp").write_text("half")
    assert installer.run(*DUAL, capsys=capsys)[0] == 0
    assert [e for e in os.listdir(installer.bin_dir) if e.startswith(".")] == []
    assert [e for e in os.listdir(installer.conf_dir) if e.startswith(".")] == []


@pytest.mark.parametrize("kind", ["script", "symlink elsewhere", "directory"])
def test_an_executable_that_is_not_ours_is_never_replaced(installer: Installer, tmp_path: Path, kind: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    installer.bin_dir.mkdir(parents=True)
    foreign = installer.plugin
    if kind == "script":
        foreign.write_text("#!/bin/sh\n")
    elif kind == "symlink elsewhere":
        foreign.symlink_to(tmp_path / "build" / "cni-bridge")
    else:
        foreign.mkdir()
    before = installer.snapshot()
    code, _, err = installer.run(*DUAL, capsys=capsys)
    assert code == 1 and "exists and is not ours" in err
    assert installer.snapshot() == before


def test_a_file_that_is_not_a_single_file_is_refused_as_input(installer: Installer, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    bundle_executable = tmp_path / "build" / "cni-bridge.d" / "cni-bridge"
    code, _, err = installer.run("--executable-only", executable=bundle_executable, capsys=capsys)
    assert code == 2 and f"{bundle_executable} is not a cni-bridge single file" in err
    assert not installer.bin_dir.exists()


def test_the_launcher_names_the_file_it_was_started_as(installer: Installer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    environ = {"CNI_BRIDGE_LAUNCHER": str(installer.executable)}
    code = install_cni.run(["--executable-only", "--bin-dir", str(installer.bin_dir)], environ)
    assert code == 0, capsys.readouterr().err
    assert installer.plugin.read_bytes() == installer.executable.read_bytes()


# --- invalid input ----------------------------------------------------------------------------

INVALID = [
    (["--pod-cidr", "10.244.3.0/33", "--cluster-cidr", "10.244.0.0/16"], "'10.244.3.0/33' is not a pod CIDR"),
    (["--pod-cidr", "banana", "--cluster-cidr", "10.244.0.0/16"], "'banana' is not a pod CIDR"),
    (["--pod-cidr", "10.244.3.0", "--cluster-cidr", "10.244.0.0/16"], "the /prefix is missing"),
    (["--pod-cidr", "10.244.3.7/24", "--cluster-cidr", "10.244.0.0/16"],
     "pod CIDR 10.244.3.7/24 has host bits set; the network is 10.244.3.0/24"),
    (["--pod-cidr", "10.244.3.0/24,10.244.4.0/24", "--cluster-cidr", "10.244.0.0/16"],
     "two IPv4 pod CIDRs (10.244.3.0/24 and 10.244.4.0/24)"),
    (["--pod-cidr", "10.244.3.0/24", "--cluster-cidr", "10.244.0.0/16,10.245.0.0/16"], "two IPv4 cluster CIDRs"),
    (["--pod-cidr", "fd00:1::/64", "--pod-cidr", "fd00:2::/64", "--cluster-cidr", "fd00::/16"], "two IPv6 pod CIDRs"),
    (["--pod-cidr", "10.245.3.0/24", "--cluster-cidr", "10.244.0.0/16"],
     "pod CIDR 10.245.3.0/24 is not inside the cluster CIDR 10.244.0.0/16"),
    (["--pod-cidr", "10.244.0.0/15", "--cluster-cidr", "10.244.0.0/16"], "is not inside the cluster CIDR"),
    (["--pod-cidr", "fd00:10:244:3::/64", "--cluster-cidr", "10.244.0.0/16"],
     "pod CIDR fd00:10:244:3::/64 is IPv6, but no IPv6 cluster CIDR was given"),
    (["--pod-cidr", "10.244.3.0/31", "--cluster-cidr", "10.244.0.0/16"], "pod CIDR 10.244.3.0/31 is too small"),
    (["--pod-cidr", "10.244.3.0/24"], "no cluster CIDR"),
    (["--cluster-cidr", "10.244.0.0/16"], "no pod CIDR: give --pod-cidr / $POD_CIDRS, or --node-name"),
    (["--cluster-cidr", "10.244.0.0/16", "--node-name", "n1"], "no API server to read the Node from"),
    (["--cluster-cidr", "10.244.0.0/16", "--node-name", "n1", "--api-server", "http://10.0.0.1"],
     "must be an https:// URL"),
    ([*DUAL, "--conf-name", "10-cni-bridge.conf"], "a file name ending in .conflist"),
    ([*DUAL, "--conf-name", "../x.conflist"], "a file name ending in .conflist"),
    ([*DUAL, "--network-name", "-bad"], "network name '-bad'"),
    ([*DUAL, "--bridge", "a-bridge-name-too-long"], "would be rejected by cni-bridge"),
    ([*DUAL, "--mtu", "20"], "would be rejected by cni-bridge"),
    ([*DUAL, "--mtu", "big"], "--mtu: 'big' is not an integer"),
    ([*DUAL, "--watch", "-1"], "--watch: '-1' must be a finite number, not negative"),
    ([*DUAL, "--watch", "inf"], "must be a finite number"),
    ([*DUAL, "--frobnicate"], "unknown option '--frobnicate'"),
    ([*DUAL, "extra"], "unexpected argument 'extra'"),
    ([*DUAL, "--bridge"], "--bridge needs a value"),
    ([*DUAL, "--bridge", "a", "--bridge=b"], "--bridge is given twice"),
]


@pytest.mark.parametrize(("args", "message"), INVALID, ids=[m[:40] for _, m in INVALID])
def test_invalid_input_is_refused_with_a_clear_message_and_nothing_written(
        installer: Installer, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, out, err = installer.run(*args, capsys=capsys)
    assert code == 2
    assert message in err
    assert "run 'cni-bridge install-cni --help' for usage" in err
    assert not installer.bin_dir.exists() and not installer.conf_dir.exists()


def test_a_variable_named_in_the_error_says_where_the_bad_value_came_from(
        installer: Installer, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = installer.run(environ={"POD_CIDRS": "10.244.3.0/24, 300.1.1.0/24", "CLUSTER_CIDRS": "10.244.0.0/16"},
                                 capsys=capsys)
    assert code == 2 and "$POD_CIDRS: '300.1.1.0/24' is not a pod CIDR" in err


def test_not_started_as_the_single_file_without_executable_option_it_says_what_to_give(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = install_cni.run(["--executable-only", "--bin-dir", str(tmp_path)], {})
    assert code == 2 and "give --executable FILE" in capsys.readouterr().err


# --- the Node object ----------------------------------------------------------------------------

def test_pod_cidrs_are_read_from_the_node_spec() -> None:
    node = {"kind": "Node", "spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24", "fd00::/64"]}}
    assert [c for c, _ in install_cni.node_pod_cidrs(node, "n1")] == ["10.244.3.0/24", "fd00::/64"]
    legacy = {"spec": {"podCIDR": "10.244.3.0/24"}}  # before dual-stack: only podCIDR
    assert [c for c, _ in install_cni.node_pod_cidrs(legacy, "n1")] == ["10.244.3.0/24"]
    with pytest.raises(install_cni.InstallError, match="Node n1 has no spec.podCIDRs yet.*--allocate-node-cidrs"):
        install_cni.node_pod_cidrs({"spec": {}}, "n1")


def test_the_api_server_comes_from_the_pod_environment() -> None:
    settings = install_cni.parse_settings([], {})
    assert install_cni.api_server_url(settings, {"KUBERNETES_SERVICE_HOST": "10.96.0.1",
                                                 "KUBERNETES_SERVICE_PORT": "443"}) == "https://10.96.0.1:443"
    assert install_cni.api_server_url(settings, {"KUBERNETES_SERVICE_HOST": "fd00:96::1",
                                                 "KUBERNETES_SERVICE_PORT": "443"}) == "https://[fd00:96::1]:443"


# --- help -----------------------------------------------------------------------------------------

def test_help_documents_every_option_and_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert install_cni.run(["--help"], {}) == 0
    text = capsys.readouterr().out
    flags = [*install_cni._OPTIONS, *install_cni._SWITCHES, "--help"]
    variables = [v for _, v in install_cni._OPTIONS.values() if v] + list(install_cni.OTHER_VARIABLES)
    assert [f for f in flags if not re.search(rf"^\s+(-h, )?{re.escape(f)}\b", text, re.M)] == []
    assert [v for v in variables if f"${v}" not in text] == []


def test_the_runner_help_names_install_cni(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(["--help"], {}) == 0
    assert "install-cni" in capsys.readouterr().out
