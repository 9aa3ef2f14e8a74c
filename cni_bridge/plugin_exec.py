"""Finding and running another CNI plugin: what delegated IPAM and the runner share.

The plugin gets the config on stdin and our stderr; its stdout comes back (process.py).
"""

from __future__ import annotations

import json

from .process import run, which


def find_executable(plugin_type: str, search_path: tuple[str, ...]) -> str | None:
    """The first ``DIR/TYPE`` along CNI_PATH that is an executable file."""
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        return None
    return which(plugin_type, search_path) or None


def spawn(executable: str, stdin: bytes, env: dict[str, str]) -> tuple[int, bytes]:
    """Run the plugin to completion: its exit status and stdout; its stderr is ours.
    OSError if it cannot be started."""
    status, stdout, _ = run([executable], stdin, env, capture_stderr=False)
    return status, stdout


def error_object(output: bytes) -> tuple[int, str, str] | None:
    """(code, msg, details) of the CNI error a failed plugin printed, or None if it printed none."""
    try:
        error = json.loads(output)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(error, dict) or not isinstance(error.get("code"), int) or isinstance(error["code"], bool):
        return None
    return error["code"], str(error.get("msg") or ""), str(error.get("details") or "")
