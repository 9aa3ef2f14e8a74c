"""Single-file executables for tests, made from the built one (cni_bridge/onefile.py).

The single file extracts its bundle into a cache directory on its first start, by default the
host's /var/lib/cni-bridge/bundles. Tests must never write there, so they run copies whose
launcher names a cache directory of the test instead (the same payload, byte for byte; only
the default in the launcher differs, as ``onefile repack`` makes it):

- ``session_executable``: the copy the whole test session runs as ``tests.plugin.BIN``;
- ``make_build``: a build of another version (the payload plus a marker file, so another hash
  and another extraction), for upgrades and side-by-side installs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tarfile
import tempfile

from cni_bridge import onefile

# Passed on to child processes (e.g. drivers that import tests.plugin inside a node) so the
# whole session shares one copy and one cache.
SESSION_VARIABLE = "CBT_SESSION_EXECUTABLE"
MARKER = os.path.join("_internal", "cbt-build")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def extract_bundle(single_file: str, directory: str) -> str:
    """The payload of single_file unpacked into directory/cni-bridge.d (as the build left it)."""
    header = onefile.read_header(single_file)
    assert header is not None, f"{single_file} is not a cni-bridge single file"
    bundle = os.path.join(directory, "cni-bridge.d")
    os.makedirs(bundle)
    with open(single_file, "rb") as handle:
        handle.seek(header.offset)
        with tarfile.open(fileobj=handle, mode="r|") as archive:
            if hasattr(tarfile, "tar_filter"):  # Python 3.11.4 and later: say that modes stay
                archive.extractall(bundle, filter="tar")
            else:
                archive.extractall(bundle)
    return bundle


def make_build(single_file: str, output: str, cache_dir: str, marker: str) -> onefile.Header:
    """Another build: single_file's bundle with a file _internal/cbt-build holding `marker`."""
    work = tempfile.mkdtemp(prefix="cbt-build-")
    try:
        bundle = extract_bundle(single_file, work)
        with open(os.path.join(bundle, MARKER), "w", encoding="utf-8") as handle:
            handle.write(marker)
        return onefile.pack(bundle, output, cache_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def make_builds(single_file: str, directory: str, names: tuple[str, ...] = ("a", "b")) -> dict[str, str]:
    """One build per name, directory/cni-bridge-NAME, marked with its name. Their built-in cache
    is directory/unused-cache: tests pass CNI_BRIDGE_CACHE_DIR to every start."""
    builds = {}
    for name in names:
        builds[name] = os.path.join(directory, f"cni-bridge-{name}")
        make_build(single_file, builds[name], os.path.join(directory, "unused-cache"), name)
    return builds


def bundle_name(single_file: str) -> str:
    """The name of single_file's extraction in a cache."""
    header = onefile.read_header(single_file)
    assert header is not None, f"{single_file} is not a cni-bridge single file"
    return header.bundle_name


def build_marker(extraction: str) -> str:
    """The marker of the build an extraction (or bundle directory) comes from; '' for none."""
    try:
        with open(os.path.join(extraction, MARKER), encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return ""


def session_executable(built: str) -> str:
    """The executable the test session runs: `built` itself if it is no single file (a bundle's
    executable), else a copy whose bundle cache is a temp dir of this session, extracted once
    here so no test sees the first start's note on stderr. Removed when the session ends."""
    shared = os.environ.get(SESSION_VARIABLE, "")
    if shared and os.path.isfile(shared):
        return shared
    if onefile.read_header(built) is None:
        return built
    directory = tempfile.mkdtemp(prefix="cbt-session-bin-")
    atexit.register(shutil.rmtree, directory, True)
    executable = os.path.join(directory, "cni-bridge")
    onefile.repack(built, executable, os.path.join(directory, "bundles"))
    subprocess.run([executable], input=b"{}", env={"PATH": PATH, "CNI_COMMAND": "VERSION"}, capture_output=True,
                   timeout=120, check=False)
    os.environ[SESSION_VARIABLE] = executable
    return executable
