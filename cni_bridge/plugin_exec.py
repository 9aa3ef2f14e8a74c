"""Finding and running another CNI plugin: what delegated IPAM and the runner share.

The plugin gets the config on stdin and our stderr; its stdout comes back. subprocess costs
~20 ms to import, so the child is started with posix_spawn and its stdin is a memfd.
"""

from __future__ import annotations

import json
import os


def find_executable(plugin_type: str, search_path: tuple[str, ...]) -> str | None:
    """The first ``DIR/TYPE`` along CNI_PATH that is an executable file."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        return None
    for directory in search_path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def spawn(executable: str, stdin: bytes, env: dict[str, str]) -> tuple[int, bytes]:
    """Run the plugin to completion: its exit status and stdout. OSError if it cannot be started."""
    stdin_fd = os.memfd_create("cni-config", os.MFD_CLOEXEC)
    read_fd, write_fd = os.pipe()
    try:
        os.write(stdin_fd, stdin)
        os.lseek(stdin_fd, 0, os.SEEK_SET)
        pid = os.posix_spawn(executable, [executable], env,
                             file_actions=[(os.POSIX_SPAWN_DUP2, stdin_fd, 0), (os.POSIX_SPAWN_DUP2, write_fd, 1)])
        os.close(write_fd)
        write_fd = -1
        chunks = []
        while chunk := os.read(read_fd, 65536):
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in (stdin_fd, read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks)


def error_object(output: bytes) -> tuple[int, str, str] | None:
    """(code, msg, details) of the CNI error a failed plugin printed, or None if it printed none."""
    try:
        error = json.loads(output)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(error, dict) or not isinstance(error.get("code"), int) or isinstance(error["code"], bool):
        return None
    return error["code"], str(error.get("msg") or ""), str(error.get("details") or "")
