"""Entry point: CNI_COMMAND and stdin in, one result or one error object out.

Only what a command needs is imported, and only once it is known to be needed: VERSION and
every input error are answered without touching netlink, iptables or jsonschema, and a request
handed to the warm helper without importing json (warm_client, jsonscan).
"""

from __future__ import annotations

import os
import sys
from . import PLUGIN_NAME, __version__, versions
from .errors import DECODE_FAILURE, INTERNAL_ERROR, IO_FAILURE, CniError
from .log import Log

# typing costs ~3 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config.model import NetConf

def _write_json(obj: Any) -> None:
    import json
    sys.stdout.write(json.dumps(obj, indent=4) + "\n")
    sys.stdout.flush()


def _read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read() if sys.stdin is not None else b""
    except OSError as exc:
        raise CniError(IO_FAILURE, "failed to read the network config from stdin", str(exc)) from None


def _decode(raw: bytes) -> dict[str, Any]:
    import json
    try:
        # Strictly UTF-8, as Go reads it: json.loads(bytes) would also guess UTF-16 and UTF-32.
        from .config.gojson import FractionalNumber, JsonObject
        doc = json.loads(raw.decode("utf-8"), parse_float=FractionalNumber, object_pairs_hook=JsonObject.from_pairs)
    except RecursionError:
        raise CniError(DECODE_FAILURE, "failed to decode the network config on stdin",
                       "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        detail = "stdin is empty" if not raw.strip() else str(exc)
        raise CniError(DECODE_FAILURE, "failed to decode the network config on stdin as JSON", detail) from None
    if not isinstance(doc, dict):
        raise CniError(DECODE_FAILURE, "failed to decode the network config on stdin",
                       f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _error_version(doc: dict[str, Any]) -> str:
    """The version errors are reported in: the config's own if we speak it."""
    version = doc.get("cniVersion", versions.IMPLICIT_VERSION)
    return version if version in versions.SUPPORTED_VERSIONS else versions.LATEST


def load_netconf(doc: dict[str, Any], command: str) -> NetConf:
    """Go's key reading, then version, schema and the semantic checks, each with its own CNI code."""
    from .config.load import load_netconf as load
    return load(doc, command)


def _version(raw: bytes) -> None:
    """Without json (jsonscan): runtimes ask VERSION often, and its answer is all it does."""
    from _json import encode_basestring_ascii as quoted

    from .jsonscan import loads
    asked = versions.LATEST
    try:
        doc = loads(raw) if raw.strip() else {}
        if isinstance(doc, dict) and isinstance(doc.get("cniVersion"), str):
            asked = doc["cniVersion"]
    except (ValueError, RecursionError):
        pass  # VERSION must answer whatever stdin holds: the runtime asks before it knows what we speak
    # What json.dumps(..., indent=4) prints for {"cniVersion": asked, "supportedVersions": [...]}.
    listed = ",\n".join(f"        {quoted(v)}" for v in versions.SUPPORTED_VERSIONS)
    sys.stdout.write(f'{{\n    "cniVersion": {quoted(asked)},\n    "supportedVersions": [\n{listed}\n    ]\n}}\n')
    sys.stdout.flush()


def _describe() -> None:
    sys.stderr.write(f"CNI {PLUGIN_NAME} plugin {__version__}\n"
                     f"CNI protocol versions supported: {', '.join(versions.SUPPORTED_VERSIONS)}\n"
                     f"Run '{PLUGIN_NAME} --help' to use it as a runner (add, check, del, gc, status).\n")


def _run_command(command: str, raw: bytes, environ: dict[str, str], state: dict[str, str]) -> int:
    from .environment import read_invocation
    invocation = read_invocation(environ)
    doc = _decode(raw)
    state["cni_version"] = _error_version(doc)
    if command == "DEL":
        from .config.load import load_for_delete
        conf = load_for_delete(doc, Log(prefix=f"{command} {invocation.container_id}: "))
    else:
        conf = load_netconf(doc, command)
    log = Log(conf.log_level, conf.log_file, prefix=f"{command} {conf.name}/{invocation.container_id}: ")
    from .request import build_delete_request, build_request
    request = build_delete_request(invocation, conf, log) if command == "DEL" else build_request(invocation, conf)
    state["log_file"] = conf.log_file

    from .commands import dispatch
    result = dispatch(command, request, log)
    if result is not None:
        from .result import render_result
        _write_json(render_result(result, conf.cni_version))
    return 0


# Commands the warm helper may run (warm_client.HELPED_COMMANDS; repeated to import nothing early).
_HELPED_COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ) if environ is None else environ
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # runtimes never pass arguments: with them, this is the cnitool-like runner
        from .runner.cli import run
        return run(argv, environ)
    if environ.get("CNI_BRIDGE_HELPER_SERVE") and not environ.get("CNI_COMMAND"):
        from .warm_server import serve
        return serve(environ["CNI_BRIDGE_HELPER_SERVE"], environ.get("CNI_BRIDGE_HELPER_LOCK_FD"))
    command = environ.get("CNI_COMMAND", "")
    if not command:
        _describe()
        return 0
    return execute(command, environ)


def execute(command: str, environ: dict[str, str], raw: bytes | None = None, *, helper_allowed: bool = True) -> int:
    """One CNI command, in this process or handed to the warm helper (whose child calls this too)."""
    state = {"cni_version": versions.LATEST, "log_file": ""}
    try:
        if raw is None:
            raw = _read_stdin()
        if command == "VERSION":
            _version(raw)
            return 0
        if helper_allowed and command in _HELPED_COMMANDS:
            return _run_helped(raw, environ, state, command)
        return _run_command(command, raw, environ, state)
    except CniError as error:
        _write_json(error.to_dict(state["cni_version"]))
        if state["log_file"]:
            Log("error", state["log_file"]).error(str(error))
        return 1
    except Exception as exc:  # a bug: report it as a CNI error, keep the traceback off stdout
        import traceback
        trace = traceback.format_exc()
        sys.stderr.write(trace)
        if state["log_file"]:
            Log("error", state["log_file"]).error(trace)
        _write_json(CniError(INTERNAL_ERROR, f"internal error: {type(exc).__name__}: {exc}",
                             "this is a bug in cni-bridge; the traceback is on stderr").to_dict(state["cni_version"]))
        return 1


def _run_helped(raw: bytes, environ: dict[str, str], state: dict[str, str], command: str) -> int:
    """The warm helper's answer if it took the request; else in-process, then start a helper
    (warm_client.mode says whether it is wanted: by default it is)."""
    from .warm_client import hand_over
    handed = hand_over(raw, environ)
    if handed.rc is not None:
        return handed.rc
    try:
        return _run_command(command, raw, environ, state)
    finally:
        handed.start_helper_if_missing()


def entry() -> None:
    sys.exit(main())
