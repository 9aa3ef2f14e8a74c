"""Entry point: CNI_COMMAND and stdin in, one result or one error object out.

Only what a command needs is imported, and only once it is known to be needed: VERSION and
every input error are answered without touching netlink, iptables or jsonschema.
"""

from __future__ import annotations

import json
import os
import sys
from . import PLUGIN_NAME, __version__, versions
from .errors import DECODE_FAILURE, INCOMPATIBLE_VERSION, INTERNAL_ERROR, IO_FAILURE, CniError
from .log import Log

# typing costs ~3 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config.model import NetConf

# Commands the spec introduced after 0.1.0, with the version that introduced them.
_MINIMUM_VERSION = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


def _write_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=4) + "\n")
    sys.stdout.flush()


def _read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read() if sys.stdin is not None else b""
    except OSError as exc:
        raise CniError(IO_FAILURE, "failed to read the network config from stdin", str(exc)) from None


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
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


def _config_version(doc: dict[str, Any]) -> str:
    version = doc.get("cniVersion", versions.IMPLICIT_VERSION)
    if version not in versions.SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI versions: config is {json.dumps(version)}, "
                       f"plugin supports {', '.join(versions.SUPPORTED_VERSIONS)}",
                       "set cniVersion to one of the supported versions")
    return str(version)


def load_netconf(doc: dict[str, Any], command: str) -> NetConf:
    """Version, then schema, then the semantic checks: each failure with its own CNI code."""
    cni_version = _config_version(doc)
    minimum = _MINIMUM_VERSION.get(command)
    if minimum and not versions.at_least(cni_version, minimum):
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}",
                       f"{command} needs cniVersion {minimum} or later; the config has {cni_version}")
    from .config.model import build_netconf
    from .config.validate import validate_document
    validate_document(doc)
    return build_netconf(doc, cni_version)


def _version(raw: bytes) -> None:
    asked = versions.LATEST
    try:
        doc = json.loads(raw) if raw.strip() else {}
        if isinstance(doc, dict) and isinstance(doc.get("cniVersion"), str):
            asked = doc["cniVersion"]
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass  # VERSION must answer whatever stdin holds: the runtime asks before it knows what we speak
    _write_json({"cniVersion": asked, "supportedVersions": list(versions.SUPPORTED_VERSIONS)})


def _describe() -> None:
    sys.stderr.write(f"CNI {PLUGIN_NAME} plugin {__version__}\n"
                     f"CNI protocol versions supported: {', '.join(versions.SUPPORTED_VERSIONS)}\n"
                     f"Run '{PLUGIN_NAME} --help' to use it as a runner (add, check, del, gc, status).\n")


def _run_command(command: str, raw: bytes, environ: dict[str, str], state: dict[str, str]) -> int:
    from .environment import read_invocation
    invocation = read_invocation(environ)
    doc = _decode(raw)
    state["cni_version"] = _config_version(doc)
    conf = load_netconf(doc, command)
    from .request import build_request
    request = build_request(invocation, conf)
    log = Log(conf.log_level, conf.log_file, prefix=f"{command} {conf.name}/{invocation.container_id}: ")
    state["log_file"] = conf.log_file

    from .commands import dispatch
    result = dispatch(command, request, log)
    if result is not None:
        from .result import render_result
        _write_json(render_result(result, conf.cni_version))
    return 0


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    environ = dict(os.environ) if environ is None else environ
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # runtimes never pass arguments: with them, this is the cnitool-like runner
        from .runner.cli import run
        return run(argv, environ)
    command = environ.get("CNI_COMMAND", "")
    if not command:
        _describe()
        return 0
    state = {"cni_version": versions.LATEST, "log_file": ""}
    try:
        raw = _read_stdin()
        if command == "VERSION":
            _version(raw)
            return 0
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


def entry() -> None:
    sys.exit(main())
