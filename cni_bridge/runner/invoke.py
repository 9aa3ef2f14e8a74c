"""Running one plugin of a list the way libcni's invoke package does: environment, errors, result."""

from __future__ import annotations

import json
import os

from ..errors import DECODE_FAILURE, PLUGIN_NOT_AVAILABLE, CniError
from ..plugin_exec import error_object, find_executable, spawn

OWN_SETTINGS_PREFIX = "CNI_BRIDGE_"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def find_plugin(plugin_type: str, search_path: tuple[str, ...]) -> str:
    executable = find_executable(plugin_type, search_path)
    if executable is None:
        raise CniError(PLUGIN_NOT_AVAILABLE, f'failed to find plugin "{plugin_type}" in path {list(search_path)}',
                       "set CNI_PATH to the directories that hold the plugins")
    return executable


def plugin_env(command: str, container_id: str, netns: str, ifname: str, cni_args: str,
               search_path: tuple[str, ...], environ: dict[str, str]) -> dict[str, str]:
    """The caller's environment with every CNI_* variable set for this call, empty ones included.

    Other CNI_* variables of the caller's are dropped, but not cni-bridge's own settings
    (CNI_BRIDGE_HELPER, CNI_BRIDGE_IPTABLES, CNI_BRIDGE_CACHE_DIR...): those are the operator's,
    for the plugin, as a runtime passes them (libcni passes its whole environment).
    """
    env = {k: v for k, v in environ.items() if not k.startswith("CNI_") or k.startswith(OWN_SETTINGS_PREFIX)}
    env.update(CNI_COMMAND=command, CNI_CONTAINERID=container_id, CNI_NETNS=netns, CNI_IFNAME=ifname,
               CNI_ARGS=cni_args, CNI_PATH=os.pathsep.join(search_path))
    return env


def _error_from_output(executable: str, status: int, stdout: bytes) -> CniError:
    error = error_object(stdout)
    if error is not None:
        return CniError(*error)
    text = stdout.decode(errors="replace").strip()
    return CniError(DECODE_FAILURE, f"netplugin failed: {text!r}" if text else "netplugin failed with no output",
                    f"{executable} exited with status {status}")


def exec_plugin(executable: str, stdin: bytes, env: dict[str, str], want_result: bool) -> dict[str, Any] | None:
    """Run the plugin; its stderr goes to ours. A failure comes back as the plugin's own CNI error."""
    try:
        status, stdout = spawn(executable, stdin, env)
    except OSError as exc:
        raise CniError(PLUGIN_NOT_AVAILABLE, f"cannot run {executable}", str(exc)) from None
    if status != 0:
        raise _error_from_output(executable, status, stdout)
    if not want_result:
        return None
    try:
        result = json.loads(stdout)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CniError(DECODE_FAILURE, f"{executable} printed no valid result", str(exc)) from None
    if not isinstance(result, dict):
        raise CniError(DECODE_FAILURE, f"{executable} printed a result that is not a JSON object")
    return result
