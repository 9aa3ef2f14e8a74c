"""From the decoded stdin document to a NetConf.

Keys are read as Go reads them (gojson), then the version, the schema and the semantic
checks each fail with their own CNI code. ADD, CHECK, STATUS and GC refuse a config with
any problem. DEL does not: a runtime sends DEL after every failed ADD, with the config that
ADD refused, and a pod whose DEL fails can never be removed. Once the network name, the
container ID and the ifname say which attachment is meant, DEL cleans up by that identity
and only logs what else is wrong.
"""

from __future__ import annotations

import json

from .. import versions
from ..environment import SAFE_NAME
from ..errors import INCOMPATIBLE_VERSION, INVALID_CONFIG, CniError
from .gojson import Origins, canonicalize
from .model import DEFAULT_DATA_DIR, IpamConf, NetConf, build_netconf
from .validate import load_schema, validate_document

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..log import Log
    from .schema_check import SchemaChecker

# Commands the spec introduced after 0.1.0, with the version that introduced them.
_MINIMUM_VERSION = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}
MAX_NAME_LENGTH = 200


class Document:
    """The caller's document and its canonical spelling, read against the schema."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.schema = load_schema()
        self.canonical, self.origins = canonicalize(raw, self.schema)

    @property
    def version(self) -> str:
        version = self.canonical.get("cniVersion", versions.IMPLICIT_VERSION)
        if version not in versions.SUPPORTED_VERSIONS:
            raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI versions: config is {json.dumps(version)}, "
                           f"plugin supports {', '.join(versions.SUPPORTED_VERSIONS)}",
                           "set cniVersion to one of the supported versions")
        return str(version)


def _lone_surrogate_path(value: Any, origins: Origins, document: Any) -> str | None:
    """Where a string holds a lone surrogate (a JSON `\\ud800` escape): no name or path can be
    encoded from it. Go would silently put U+FFFD there; we refuse (see the README)."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            try:
                node.encode()
            except UnicodeEncodeError:
                from .validate import json_path
                return json_path(origins.written_path(document, path)) or "(top level)"
        elif isinstance(node, dict):
            for key, item in node.items():
                stack.append((key, path))
                stack.append((item, [*path, key]))
        elif isinstance(node, list):
            stack.extend((item, [*path, index]) for index, item in enumerate(node))
    return None


def _check(document: Document, command: str, explained: bool = True) -> NetConf:
    cni_version = document.version
    minimum = _MINIMUM_VERSION.get(command)
    if minimum and not versions.at_least(cni_version, minimum):
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}",
                       f"{command} needs cniVersion {minimum} or later; the config has {cni_version}")
    where = _lone_surrogate_path(document.canonical, document.origins, document.canonical)
    if where is not None:
        raise CniError(INVALID_CONFIG, f"{where}: holds a lone UTF-16 surrogate (an escape like \\ud800)",
                       "strings must be valid Unicode")
    validate_document(document.canonical, document.schema, document.origins, explained)
    try:
        return build_netconf(document.canonical, cni_version, raw=document.raw)
    except CniError as exc:
        if exc.code == INVALID_CONFIG:
            exc.msg = _respell(exc.msg, document)
            exc.args = (exc.msg,)
        raise


def _respell(message: str, document: Document) -> str:
    """`ipam.ranges[0][0].subnet: ...` with the keys as the caller wrote them."""
    where, sep, why = message.partition(": ")
    if not sep or not where or " " in where:
        return message
    import re
    parts: list[str | int] = [int(token[1:-1]) if token.startswith("[") else token
                              for token in re.findall(r"\[\d+\]|[^.\[\]]+", where)]
    from .validate import json_path
    return f"{json_path(document.origins.written_path(document.canonical, parts))}{sep}{why}"


def load_netconf(raw: dict[str, Any], command: str) -> NetConf:
    return _check(Document(raw), command)


def _network_name(document: Document) -> str:
    name = document.canonical.get("name")
    if name is None:
        raise CniError(INVALID_CONFIG, "name: missing network name", "DEL needs it to find the attachment")
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise CniError(INVALID_CONFIG, f"name: {json.dumps(name)} is not a valid network name",
                       "DEL needs it to find the attachment")
    return name


def load_for_delete(raw: dict[str, Any], log: Log) -> NetConf:
    """The NetConf DEL works with: the whole config if it is valid, else what identifies the
    attachment plus every key DEL uses that is valid on its own."""
    document = Document(raw)
    name = _network_name(document)
    try:
        return _check(document, "DEL", explained=False)
    except CniError as exc:
        log.warning(f"the config has a problem; deleting by the attachment's identity: {exc}")
    canonical = document.canonical
    version = canonical.get("cniVersion")
    if version not in versions.SUPPORTED_VERSIONS:
        version = versions.LATEST
    salvaged: dict[str, Any] = {"cniVersion": version, "name": name, "type": "cni-bridge"}
    from .schema_check import SchemaChecker
    checker = SchemaChecker(document.schema)
    for key in ("stateDir", "logFile", "logLevel"):
        if key in canonical and checker.is_valid({**salvaged, key: canonical[key]}):
            salvaged[key] = canonical[key]
    return build_netconf(salvaged, str(version), raw=raw, ipam=_salvage_ipam(canonical.get("ipam"), checker, salvaged))


def _salvage_ipam(ipam: Any, checker: SchemaChecker, base: dict[str, Any]) -> IpamConf | None:
    """Enough of `ipam` to release the attachment's addresses: the type, and the store's place."""
    if not isinstance(ipam, dict) or not ipam.get("type"):
        return None
    if not checker.is_valid({**base, "ipam": {"type": ipam["type"]}}):
        return None  # not a name we would run as a plugin
    data_dir = ipam.get("dataDir")
    if not checker.is_valid({**base, "ipam": {"type": ipam["type"], "dataDir": data_dir}}):
        data_dir = DEFAULT_DATA_DIR
    return IpamConf(type=ipam["type"], range_sets=(), routes=(), data_dir=data_dir or DEFAULT_DATA_DIR,
                    resolv_conf="")
