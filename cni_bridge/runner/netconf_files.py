"""Network lists from a config directory, found the way libcni finds them.

``.conflist`` files first, in name order; then single-plugin ``.conf`` and ``.json`` files,
which are wrapped into a list of one. A list may also pick up plugin configs from
``DIR/NETNAME/*.conf`` unless it sets ``loadOnlyInlinedPlugins``.
"""

from __future__ import annotations

import json
import os

from ..errors import DECODE_FAILURE, INVALID_CONFIG, IO_FAILURE, CniError
from ..records import record
from .. import versions

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@record(frozen=True)
class NetworkList:
    name: str
    cni_version: str
    plugins: tuple[dict[str, Any], ...]
    raw: bytes
    source: str
    disable_check: bool = False
    disable_gc: bool = False


def _files(directory: str, extensions: tuple[str, ...]) -> list[str]:
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read the network config directory {directory}", str(exc)) from None
    return [e.path for e in entries
            if os.path.splitext(e.name)[1] in extensions and not e.is_dir()]


def _read_json(path: str) -> tuple[bytes, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise CniError(IO_FAILURE, f"cannot read {path}", str(exc)) from None
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CniError(DECODE_FAILURE, f"{path} is not valid JSON", str(exc)) from None
    if not isinstance(doc, dict):
        raise CniError(DECODE_FAILURE, f"{path} is not a JSON object")
    return raw, doc


def _flag(doc: dict[str, Any], key: str, path: str) -> bool:
    value = doc.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise CniError(INVALID_CONFIG, f"{path}: {key} must be a boolean", repr(value))


def _pick_version(doc: dict[str, Any], path: str) -> str:
    """cniVersion, or the newest of cniVersions (plus cniVersion) that this runner speaks."""
    version = doc.get("cniVersion", "")
    if not isinstance(version, str):
        raise CniError(INVALID_CONFIG, f"{path}: cniVersion must be a string", repr(version))
    candidates = doc.get("cniVersions")
    if candidates is None:
        return version
    if not isinstance(candidates, list) or not all(isinstance(v, str) for v in candidates):
        raise CniError(INVALID_CONFIG, f"{path}: cniVersions must be a list of strings")
    known = [v for v in [*candidates, version] if v in versions.SUPPORTED_VERSIONS]
    return max(known, key=versions.key) if known else version


def _plugin_dir_confs(directory: str, name: str) -> list[dict[str, Any]]:
    plugins = []
    for path in _files(os.path.join(directory, name), (".conf",)):
        plugin = _read_json(path)[1]
        if not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise CniError(INVALID_CONFIG, f"{path}: plugin config has no type")
        plugins.append(plugin)
    return plugins


def _list_from_doc(raw: bytes, doc: dict[str, Any], path: str) -> NetworkList:
    name = doc.get("name")
    if not isinstance(name, str):
        raise CniError(INVALID_CONFIG, f"{path}: the network list has no name")
    inlined_only = _flag(doc, "loadOnlyInlinedPlugins", path)
    plugins = doc.get("plugins", [])
    if not isinstance(plugins, list) or ("plugins" in doc and not plugins):
        raise CniError(INVALID_CONFIG, f"{path}: plugins must be a non-empty list")
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str) or not plugin["type"]:
            raise CniError(INVALID_CONFIG, f"{path}: plugin {index} has no type")
    if not inlined_only:
        plugins = [*plugins, *_plugin_dir_confs(os.path.dirname(path), name)]
    if not plugins:
        raise CniError(INVALID_CONFIG, f"{path}: network {name!r} has no plugins")
    return NetworkList(name=name, cni_version=_pick_version(doc, path), plugins=tuple(plugins), raw=raw,
                       source=path, disable_check=_flag(doc, "disableCheck", path),
                       disable_gc=_flag(doc, "disableGC", path))


def load_network_list(directory: str, name: str) -> NetworkList:
    """The list named ``name`` in ``directory``; a file that cannot be parsed stops the search, as in libcni."""
    lists = _files(directory, (".conflist",))
    for path in lists:
        raw, doc = _read_json(path)
        if doc.get("name") == name:
            return _list_from_doc(raw, doc, path)
        _list_from_doc(raw, doc, path)  # libcni rejects a broken list even when it is not the one asked for
    singles = _files(directory, (".conf", ".json"))
    for path in singles:
        raw, doc = _read_json(path)
        if not isinstance(doc.get("type"), str) or not doc["type"]:
            raise CniError(INVALID_CONFIG, f"{path}: network config has no type")
        if doc.get("name") == name:
            wrapped = {"name": name, "cniVersion": doc.get("cniVersion", ""), "plugins": [doc]}
            return _list_from_doc(json.dumps(wrapped).encode(), wrapped, path)
    if not lists and not singles:
        raise CniError(INVALID_CONFIG, f"no net configurations found in {directory}")
    raise CniError(INVALID_CONFIG, f'no net configuration with name "{name}" in {directory}')
