"""The single file (cni_bridge/onefile.py, cni_bridge/launcher.sh) on small stand-in bundles:
packing, the launcher's pass-through, extraction and its failures, pruning the cache. Real
/bin/sh, tar and kernel; no root needed, everything in pytest's tmp_path.
tests/integration/test_onefile.py runs the real bundle."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from cni_bridge import onefile

pytestmark = pytest.mark.unit

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# Prints what it was given: argv (NUL separated), cwd, stdin, then its environment.
REPORTER = """#!/bin/sh
printf '%s\\0' "$0" "$@" > "$(dirname "$0")/report.argv"
pwd > "$(dirname "$0")/report.cwd"
cat > "$(dirname "$0")/report.stdin"
exec env -0 > "$(dirname "$0")/report.env"
"""


def make_bundle(directory: Path, program: str = REPORTER, extra: str = "") -> Path:
    bundle = directory / "cni-bridge.d"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "cni-bridge").write_text(program)
    (bundle / "cni-bridge").chmod(0o755)
    (bundle / "_internal" / "data.txt").write_text(f"data{extra}")
    return bundle


@pytest.fixture
def single_file(tmp_path: Path) -> Path:
    output = tmp_path / "bin" / "cni-bridge"
    output.parent.mkdir()
    onefile.pack(str(make_bundle(tmp_path / "build")), str(output), str(tmp_path / "default-cache"))
    return output


def start(executable: Path, env: dict[str, str], stdin: bytes = b"", args: tuple[str, ...] = (),
          cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(executable), *args], input=stdin, env={"PATH": PATH, **env}, cwd=cwd,
                          capture_output=True, timeout=60, check=False)


def name_of(executable: Path) -> str:
    header = onefile.read_header(str(executable))
    assert header is not None
    return header.bundle_name


# --- packing ------------------------------------------------------------------------------------

def test_packing_depends_on_contents_and_modes_only(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    a = onefile.pack(str(make_bundle(tmp_path / "a")), str(first))
    time.sleep(0.01)
    b = onefile.pack(str(make_bundle(tmp_path / "b")), str(second))  # other times, same contents
    assert first.read_bytes() == second.read_bytes() and a.sha256 == b.sha256
    (tmp_path / "b" / "cni-bridge.d" / "_internal" / "data.txt").chmod(0o755)
    assert onefile.pack(str(tmp_path / "b" / "cni-bridge.d"), str(second)).sha256 != a.sha256
    c = onefile.pack(str(make_bundle(tmp_path / "c", extra="!")), str(second))
    assert c.sha256 != a.sha256


def test_the_header_describes_the_payload(single_file: Path, tmp_path: Path) -> None:
    header = onefile.read_header(str(single_file))
    assert header is not None and header.default_cache_dir == str(tmp_path / "default-cache")
    data = single_file.read_bytes()
    assert data[:header.offset].endswith(b"\n")
    assert re.findall(rb"@[A-Z_0-9]+@", data[:header.offset]) == []  # every field filled in
    import hashlib
    assert hashlib.sha256(data[header.offset:]).hexdigest() == header.sha256
    with open(single_file, "rb") as handle:
        handle.seek(header.offset)
        with tarfile.open(fileobj=handle, mode="r|") as archive:
            members = {m.name: (m.mode, m.uid, m.mtime) for m in archive}
    assert members == {"_internal": (0o755, 0, 0), "_internal/data.txt": (0o644, 0, 0),
                       "cni-bridge": (0o755, 0, 0)}
    assert onefile.read_header(str(tmp_path / "build" / "cni-bridge.d" / "cni-bridge")) is None


def test_repack_changes_the_default_cache_only(single_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    header = onefile.repack(str(single_file), str(copy), "/srv/cache")
    before = onefile.read_header(str(single_file))
    assert before is not None and header.sha256 == before.sha256
    assert onefile.payload_of(str(copy)) == onefile.payload_of(str(single_file))
    assert "cache=${CNI_BRIDGE_CACHE_DIR:-/srv/cache}" in copy.read_text(errors="replace")
    with pytest.raises(ValueError):
        onefile.repack(str(single_file), str(copy), "relative/dir")


# --- the launcher -----------------------------------------------------------------------------

def test_arguments_environment_stdin_and_directory_reach_the_bundle(single_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"CNI_BRIDGE_CACHE_DIR": str(cache), "CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=two words",
           "ODD": "tab\there\nnewline $HOME `x` 'q' \"dq\" \\"}
    args = ("first", "with space", "", "new\nline", "*", "$PATH")
    stdin = bytes(range(256)) * 100
    work = tmp_path / "work dir"
    work.mkdir()
    for run in range(2):  # the first start extracts, the second runs the extraction
        proc = start(single_file, env, stdin, args, cwd=work)
        assert proc.returncode == 0, proc.stderr
        extraction = cache / name_of(single_file)
        argv = (extraction / "report.argv").read_bytes().split(b"\0")[:-1]
        assert argv == [str(extraction / "cni-bridge").encode(), *(a.encode() for a in args)]
        assert (extraction / "report.cwd").read_text() == f"{work}\n"
        assert (extraction / "report.stdin").read_bytes() == stdin
        # /bin/sh adds PWD (the same directory), the launcher what the bootloader's restart would
        # set; nothing else is added, changed or removed.
        assert reported_env(extraction) == {"PATH": PATH, **env, "PWD": str(work), **bootloader_env(extraction)}
        assert (b"extracted the bundle" in proc.stderr) == (run == 0)


def reported_env(extraction: Path) -> dict[str, str]:
    return dict(e.split("=", 1) for e in (extraction / "report.env").read_text().split("\0")[:-1])


def bootloader_env(extraction: Path, library_path: str = "") -> dict[str, str]:
    """The variables PyInstaller's bootloader sets before it restarts itself (one-folder mode)."""
    return {"_PYI_ARCHIVE_FILE": str(extraction / "cni-bridge"), "_PYI_PARENT_PROCESS_LEVEL": "-1",
            "_PYI_LINUX_PROCESS_NAME": "cni-bridge",
            "LD_LIBRARY_PATH": str(extraction / "_internal") + (f":{library_path}" if library_path else ""),
            **({"LD_LIBRARY_PATH_ORIG": library_path} if library_path else {})}


def test_the_launcher_sets_what_the_bootloader_would_restart_for(single_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    extraction = cache / name_of(single_file)
    for run in range(2):  # after the extraction, and from it
        proc = start(single_file, {"CNI_BRIDGE_CACHE_DIR": str(cache), "LD_LIBRARY_PATH": "/opt/lib"})
        assert proc.returncode == 0, proc.stderr
        assert reported_env(extraction) == {"PATH": PATH, "CNI_BRIDGE_CACHE_DIR": str(cache),
                                            "PWD": os.getcwd(), **bootloader_env(extraction, "/opt/lib")}
    # Started from inside this build (the bundle runs itself, or a helper), the variables already
    # name it: they stay as the bootloader left them.
    inherited = {"CNI_BRIDGE_CACHE_DIR": str(cache), "_PYI_ARCHIVE_FILE": str(extraction / "cni-bridge"),
                 "_PYI_PARENT_PROCESS_LEVEL": "0", "LD_LIBRARY_PATH": "/x"}
    assert start(single_file, inherited).returncode == 0
    assert reported_env(extraction) == {"PATH": PATH, "PWD": os.getcwd(), **inherited}


def test_the_extraction_is_named_by_the_hash_and_records_each_start(single_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    start(single_file, {"CNI_BRIDGE_CACHE_DIR": str(cache)})
    extraction = cache / name_of(single_file)
    assert sorted(os.listdir(cache)) == [".lock", name_of(single_file)]
    assert (extraction / "_internal" / "data.txt").read_text() == "data"
    marker = extraction / ".last-start"
    os.utime(marker, (0, 0))
    start(single_file, {"CNI_BRIDGE_CACHE_DIR": str(cache)})
    assert time.time() - marker.stat().st_mtime < 60


def test_without_the_variable_the_built_in_default_is_used(single_file: Path, tmp_path: Path) -> None:
    assert start(single_file, {}).returncode == 0
    assert (tmp_path / "default-cache" / name_of(single_file) / "cni-bridge").is_file()


def error_of(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    error = json.loads(proc.stdout)
    assert isinstance(error, dict) and set(error) == {"cniVersion", "code", "msg", "details"}
    return error


def test_a_truncated_copy_is_refused_and_never_extracted(single_file: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated"
    data = single_file.read_bytes()
    truncated.write_bytes(data[:len(data) - 1024])
    truncated.chmod(0o755)
    cache = tmp_path / "cache"
    proc = start(truncated, {"CNI_BRIDGE_CACHE_DIR": str(cache), "CNI_COMMAND": "ADD"},
                 stdin=b'{"cniVersion": "0.4.0", "name": "n"}')
    error = error_of(proc)
    assert error["code"] == 5 and "is damaged or incomplete" in str(error["msg"])
    assert error["cniVersion"] == "0.4.0"  # the request's
    assert os.listdir(cache) == [".lock"]


def test_a_relative_cache_directory_is_an_invalid_environment(single_file: Path, tmp_path: Path) -> None:
    proc = start(single_file, {"CNI_BRIDGE_CACHE_DIR": "cache", "CNI_COMMAND": "VERSION"}, cwd=tmp_path)
    error = error_of(proc)
    assert error["code"] == 4 and error["cniVersion"] == "1.1.0" and not (tmp_path / "cache").exists()


def test_a_cache_that_cannot_be_created_is_an_io_failure_named_in_the_error(single_file: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = start(single_file, {"CNI_BRIDGE_CACHE_DIR": f"{blocker}/cache", "CNI_COMMAND": "VERSION"})
    error = error_of(proc)
    assert error["code"] == 5 and error["msg"] == f"cannot create the bundle cache {blocker}/cache"
    assert "Not a directory" in str(error["details"])
    assert start(single_file, {"CNI_BRIDGE_CACHE_DIR": f"{blocker}/cache"}).stdout == b""  # no runtime, no JSON


def test_an_interrupted_extraction_is_never_used_and_is_cleaned_up(single_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    leftover = cache / f".tmp-{name_of(single_file)}.99999"
    (leftover / "_internal").mkdir(parents=True)
    (leftover / "cni-bridge").write_text("#!/bin/sh\necho half an extraction\n")
    (leftover / "cni-bridge").chmod(0o755)
    proc = start(single_file, {"CNI_BRIDGE_CACHE_DIR": str(cache)})
    assert proc.returncode == 0 and b"half" not in proc.stdout
    assert sorted(os.listdir(cache)) == [".lock", name_of(single_file)]


def test_an_extraction_damaged_by_hand_is_set_aside_and_extracted_again(single_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    start(single_file, {"CNI_BRIDGE_CACHE_DIR": str(cache)})
    extraction = cache / name_of(single_file)
    (extraction / "cni-bridge").unlink()
    proc = start(single_file, {"CNI_BRIDGE_CACHE_DIR": str(cache)})
    assert proc.returncode == 0 and b"extracted the bundle" in proc.stderr, proc
    assert (extraction / "cni-bridge").is_file()
    [aside] = [e for e in os.listdir(cache) if e.startswith(".old-")]
    # The real bundle prunes right after extracting (this stand-in cannot): nothing runs from it.
    assert onefile.prune(str(cache), keep=name_of(single_file)) == [f"removed {cache / aside}"]


# --- pruning --------------------------------------------------------------------------------------

DAY = 24 * 3600


def fake_extraction(cache: Path, name: str, last_start_age: float) -> Path:
    path = cache / name
    (path / "_internal").mkdir(parents=True)
    shutil.copy("/bin/sleep", path / "cni-bridge")
    (path / ".last-start").write_text("")
    moment = time.time() - last_start_age
    os.utime(path / ".last-start", (moment, moment))
    return path


def test_prune_removes_only_what_nothing_uses(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    current = fake_extraction(cache, "a" * 16, 2 * DAY)  # the one pruning: never removed
    unused = fake_extraction(cache, "b" * 16, 2 * DAY)
    recent = fake_extraction(cache, "c" * 16, DAY - 600)
    running = fake_extraction(cache, "d" * 16, 2 * DAY)
    interrupted = cache / ".tmp-eeeeeeeeeeeeeeee.4242"
    interrupted.mkdir()
    not_ours = cache / "lost+found"
    not_ours.mkdir()
    sleeper = subprocess.Popen([str(running / "cni-bridge"), "60"])
    try:
        lines = onefile.prune(str(cache), keep=current.name)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(os.listdir(cache)) == sorted([".lock", current.name, recent.name, running.name, "lost+found"])
    assert lines == [f"removed {interrupted} (an interrupted extraction)",
                     f"removed {unused}",
                     f"kept {recent}: last started 23.8 h ago",
                     f"kept {running}: process {sleeper.pid} runs from it"]
    assert (running / "cni-bridge").is_file()  # renamed back whole
    assert onefile.prune(str(cache), keep=current.name) == [f"kept {recent}: last started 23.8 h ago",
                                                             f"removed {running}"]


def test_prune_waits_for_an_extraction_in_progress(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fake_extraction(cache, "b" * 16, 2 * DAY)
    holder = subprocess.Popen(["flock", str(cache / ".lock"), "sleep", "0.5"])
    try:
        time.sleep(0.1)
        started = time.monotonic()
        assert onefile.prune(str(cache), keep="") == [f"removed {cache / ('b' * 16)}"]
        assert time.monotonic() - started > 0.2
    finally:
        holder.wait()


def test_prune_bundles_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    fake_extraction(cache, "b" * 16, 2 * DAY)
    assert onefile.run_prune([], {"CNI_BRIDGE_CACHE_DIR": str(cache)}) == 0
    assert capsys.readouterr().out == f"cni-bridge prune-bundles: removed {cache / ('b' * 16)}\n"
    assert onefile.run_prune([str(tmp_path / "none")], {}) == 0
    assert "does not exist; nothing to do" in capsys.readouterr().out
    assert onefile.run_prune(["--help"], {}) == 0 and "usage:" in capsys.readouterr().out
