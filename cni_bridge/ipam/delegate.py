"""IPAM types other than host-local: run the plugin of that name from CNI_PATH, as the spec says.

Same environment, the whole config on stdin, its stderr passed through (../plugin_exec.py).
"""

from __future__ import annotations

import json
import os

from ..errors import DELEGATE_FAILURE, CniError
from ..plugin_exec import error_object, find_executable, spawn
from ..result import IPConfig, Result, parse_result
from ..versions import SUPPORTED_VERSIONS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..config.model import IpamConf
    from ..request import Request


def find_plugin(name: str, paths: tuple[str, ...]) -> str:
    executable = find_executable(name, paths)
    if executable is None:
        raise CniError(DELEGATE_FAILURE, f'failed to find IPAM plugin "{name}" in path {list(paths)}',
                       "set CNI_PATH to the directories holding the IPAM plugin")
    return executable


def run_plugin(executable: str, command: str, stdin: bytes, environ: dict[str, str]) -> bytes:
    try:
        status, output = spawn(executable, stdin, {**environ, "CNI_COMMAND": command})
    except OSError as exc:
        raise CniError(DELEGATE_FAILURE, f"failed to run IPAM plugin {executable}: {exc.strerror}") from None
    if status != 0:
        _raise_plugin_error(executable, command, output)
    return output


def _raise_plugin_error(executable: str, command: str, output: bytes) -> None:
    name = os.path.basename(executable)
    error = error_object(output)
    if error is None:
        raise CniError(DELEGATE_FAILURE, f"IPAM plugin {name} {command} failed",
                       output.decode(errors="replace")[:2000])
    code, msg, details = error
    # Well-known codes mean the same from any plugin; a delegate's own codes would be read as ours.
    if code >= 100:
        details = f"{name} error code {code}" + (f": {details}" if details else "")
        code = DELEGATE_FAILURE
    raise CniError(code, f"IPAM plugin {name}: {msg}", details)


class Delegated:
    def __init__(self, request: Request, ipam: IpamConf) -> None:
        self.request = request
        self.ipam = ipam

    def _run(self, command: str, doc: dict[str, object] | None = None) -> bytes:
        executable = find_plugin(self.ipam.type, self.request.invocation.path)
        stdin = json.dumps(doc if doc is not None else self.request.conf.raw).encode()
        return run_plugin(executable, command, stdin, dict(os.environ))

    def add(self) -> Result:
        output = self._run("ADD")
        try:
            doc = json.loads(output)
        except ValueError:
            self.delete()
            raise CniError(DELEGATE_FAILURE, f"IPAM plugin {self.ipam.type} printed no JSON result",
                           output.decode(errors="replace")[:2000]) from None
        version = self.request.conf.cni_version
        if isinstance(doc, dict) and doc.get("cniVersion"):
            version = doc["cniVersion"]
        try:
            if version not in SUPPORTED_VERSIONS:
                raise CniError(DELEGATE_FAILURE, f"IPAM plugin {self.ipam.type} answered in unknown version {version!r}")
            result = parse_result(doc, version, f"IPAM plugin {self.ipam.type} result")
        except CniError as exc:
            self.delete()
            raise CniError(DELEGATE_FAILURE, exc.msg, exc.details) from None
        if not result.ips:
            self.delete()
            raise CniError(DELEGATE_FAILURE, f"IPAM plugin {self.ipam.type} returned no IP addresses")
        return result

    def delete(self) -> None:
        if find_executable(self.ipam.type, self.request.invocation.path) is None:
            # Nothing it could have allocated can be released without it, and a DEL that
            # fails for ever leaves the pod stuck: say so and go on.
            from ..log import Log
            conf = self.request.conf
            Log(conf.log_level, conf.log_file).warning(
                f'IPAM plugin "{self.ipam.type}" is not in CNI_PATH; its addresses were not released')
            return
        self._run("DEL")

    def check(self, ips: list[IPConfig]) -> None:
        self._run("CHECK")

    def gc(self, valid: frozenset[tuple[str, str]]) -> list[str]:
        try:
            self._run("GC")
        except CniError as exc:
            return [str(exc)]
        return []

    def status(self) -> None:
        self._run("STATUS")

