"""ADD, CHECK, DEL, GC and STATUS of a whole network list, with prevResult chaining and the result cache.

The order and the version rules are libcni's: plugins run in list order (DEL in reverse), each
plugin's ADD result is the next one's prevResult, CHECK and DEL get the cached final result
(from cniVersion 0.4.0), GC and STATUS exist from 1.1.0.
"""

from __future__ import annotations

import json

from .. import versions
from ..errors import CONTAINER_UNKNOWN, INCOMPATIBLE_VERSION, INTERFACE_EXISTS, CniError
from ..records import field, record
from ..warm_client import for_plugins_we_start
from .cache import CachedAttachment, ResultCache
from .invoke import exec_plugin, find_plugin, plugin_env
from .netconf_files import NetworkList

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


@record(frozen=True)
class Attachment:
    """What libcni calls the RuntimeConf: one container interface on one network."""
    container_id: str
    netns: str
    ifname: str
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: dict[str, Any] = field(default_factory=dict)

    @property
    def cni_args_string(self) -> str:
        return ";".join(f"{k}={v}" for k, v in self.cni_args)


def stale_attachment(entry: CachedAttachment) -> Attachment:
    """The attachment of a stale cache entry, for its DEL. The netns path of one from an earlier
    boot may name a namespace made since (a bare name re-added), which is not that container's."""
    netns = "" if entry.from_an_earlier_boot else entry.netns
    return Attachment(entry.container_id, netns, entry.ifname, entry.cni_args, entry.capability_args)


def _at_least(version: str, minimum: str) -> bool:
    try:
        return versions.at_least(version, minimum)
    except ValueError:
        raise CniError(INCOMPATIBLE_VERSION, f"invalid cniVersion {version!r} in the network list") from None


def _describe(plugin: dict[str, Any]) -> str:
    name = plugin.get("name")
    return f'type="{plugin.get("type")}"' + (f' name="{name}"' if isinstance(name, str) and name else "")


def _failed(plugin: dict[str, Any], action: str, error: CniError) -> CniError:
    return CniError(error.code, f"plugin {_describe(plugin)} failed ({action}): {error.msg}", error.details)


class ListRunner:
    def __init__(self, search_path: tuple[str, ...], cache: ResultCache, environ: dict[str, str]) -> None:
        self.search_path = search_path
        self.cache = cache
        self.environ = for_plugins_we_start(environ)

    # --- one plugin ---------------------------------------------------------------------

    def _config(self, netlist: NetworkList, plugin: dict[str, Any], prev_result: dict[str, Any] | None,
                attachment: Attachment | None) -> bytes:
        conf = {**plugin, "name": netlist.name, "cniVersion": netlist.cni_version}
        if prev_result is not None:
            conf["prevResult"] = prev_result
        if attachment is not None:
            capabilities = plugin.get("capabilities")
            wanted = capabilities if isinstance(capabilities, dict) else {}
            runtime = {cap: attachment.capability_args[cap] for cap, on in wanted.items()
                       if on is True and cap in attachment.capability_args}
            if runtime:
                conf["runtimeConfig"] = runtime
        return json.dumps(conf).encode()

    def _run(self, command: str, netlist: NetworkList, plugin: dict[str, Any], prev_result: dict[str, Any] | None,
             attachment: Attachment | None, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
        executable = find_plugin(str(plugin.get("type", "")), self.search_path)
        stdin = self._config(netlist, {**plugin, **(extra or {})}, prev_result, attachment)
        a = attachment or Attachment("", "", "")
        env = plugin_env(command, a.container_id, a.netns, a.ifname, a.cni_args_string, self.search_path,
                         self.environ)
        return exec_plugin(executable, stdin, env, want_result=command == "ADD")

    # --- cached results -----------------------------------------------------------------

    def _cached(self, netlist: NetworkList, attachment: Attachment) -> tuple[dict[str, Any] | None, Attachment]:
        """The cached result (in the list's version) and the attachment completed from the cache.

        A runtime passes DEL and CHECK the same CNI_ARGS and capability arguments as the ADD (portmap,
        say, removes nothing and checks nothing without its portMappings); the cache keeps them for that.
        When the caller gives none again, those of the ADD are used.
        """
        entry = self.cache.read(netlist.name, attachment.container_id, attachment.ifname)
        if entry is None:
            return None, attachment
        completed = Attachment(attachment.container_id, attachment.netns, attachment.ifname,
                               attachment.cni_args or entry.cni_args,
                               attachment.capability_args or entry.capability_args)
        result = _as_version(entry.result, netlist.cni_version) if entry.result is not None else None
        return result, completed

    # --- the list commands --------------------------------------------------------------

    def add(self, netlist: NetworkList, attachment: Attachment) -> dict[str, Any]:
        earlier = self.cache.read(netlist.name, attachment.container_id, attachment.ifname)
        if earlier is not None and earlier.from_an_earlier_boot:
            # Gone with the reboot: what the plugins may still hold for it is released first, as gc would.
            self.delete(netlist, stale_attachment(earlier))
        elif earlier is not None:
            raise CniError(INTERFACE_EXISTS, f"{attachment.ifname} of container {attachment.container_id} is already "
                           f"attached to network {netlist.name!r}",
                           f"cached in {self.cache.path(netlist.name, attachment.container_id, attachment.ifname)}; "
                           "run del first")
        result: dict[str, Any] | None = None
        for plugin in netlist.plugins:
            try:
                result = self._run("ADD", netlist, plugin, result, attachment)
            except CniError as error:
                raise self._undo_failed_add(netlist, attachment, _failed(plugin, "add", error)) from None
        assert result is not None  # a list has at least one plugin, and ADD always returns a result
        try:
            self.cache.write(netlist.name, attachment.container_id, attachment.ifname, attachment.netns,
                             netlist.raw, attachment.cni_args, attachment.capability_args, result)
        except CniError as error:  # without its cached result the attachment could not be checked or deleted well
            raise self._undo_failed_add(netlist, attachment, error) from None
        return result

    def _undo_failed_add(self, netlist: NetworkList, attachment: Attachment, error: CniError) -> CniError:
        """Runtimes DEL an attachment whose ADD failed; so does the runner, so nothing stays half made.

        Best effort: every plugin gets its DEL even when another one's DEL fails or the plugin cannot be
        found (a missing plugin later in the list must not keep the earlier ones from cleaning up).
        """
        problems = []
        for plugin in reversed(netlist.plugins):
            try:
                self._run("DEL", netlist, plugin, None, attachment)
            except CniError as cleanup:
                problems.append(str(_failed(plugin, "delete", cleanup)))
        outcome = (f"cleanup DEL also failed: {'; '.join(problems)}" if problems
                   else "the partial attachment was deleted")
        return CniError(error.code, error.msg, "; ".join(filter(None, [error.details, outcome])))

    def check(self, netlist: NetworkList, attachment: Attachment) -> None:
        if not _at_least(netlist.cni_version, "0.4.0"):
            raise CniError(INCOMPATIBLE_VERSION,
                           f"configuration version {netlist.cni_version!r} does not support the CHECK command")
        if netlist.disable_check:
            return
        cached, attachment = self._cached(netlist, attachment)
        if cached is None:
            raise CniError(CONTAINER_UNKNOWN, f"no cached result for {attachment.ifname} of container "
                           f"{attachment.container_id} on network {netlist.name!r}",
                           f"looked in {self.cache.directory}; was it added with this cache directory?")
        for plugin in netlist.plugins:
            try:
                self._run("CHECK", netlist, plugin, cached, attachment)
            except CniError as error:
                raise _failed(plugin, "check", error) from None

    def delete(self, netlist: NetworkList, attachment: Attachment) -> None:
        cached, attachment = self._cached(netlist, attachment)
        if not _at_least(netlist.cni_version, "0.4.0"):
            cached = None  # DEL gets prevResult from 0.4.0 on
        self._delete_all(netlist, attachment, cached)
        self.cache.delete(netlist.name, attachment.container_id, attachment.ifname)

    def _delete_all(self, netlist: NetworkList, attachment: Attachment, cached: dict[str, Any] | None) -> None:
        for plugin in reversed(netlist.plugins):
            try:
                self._run("DEL", netlist, plugin, cached, attachment)
            except CniError as error:
                raise _failed(plugin, "delete", error) from None

    def gc(self, netlist: NetworkList, is_stale: Callable[[CachedAttachment], bool]) -> GcReport:
        """DEL cached attachments that ``is_stale``, then GC every plugin with the rest as valid attachments."""
        report = GcReport()
        valid: list[dict[str, str]] = []
        for entry in self.cache.attachments(netlist.name):
            if not is_stale(entry):
                valid.append({"containerID": entry.container_id, "ifname": entry.ifname})
                report.valid.append(f"{entry.container_id}/{entry.ifname}")
                continue
            try:
                self.delete(netlist, stale_attachment(entry))
                report.deleted.append(f"{entry.container_id}/{entry.ifname}")
            except CniError as error:
                report.errors.append(f"failed to delete stale attachment {entry.container_id} {entry.ifname}: {error}")
        if netlist.disable_gc or not _at_least(netlist.cni_version, "1.1.0"):
            return report
        for plugin in netlist.plugins:
            try:
                self._run("GC", netlist, plugin, None, None, {"cni.dev/valid-attachments": valid})
                report.collected.append(_describe(plugin))
            except CniError as error:
                report.errors.append(str(_failed(plugin, "gc", error)))
        return report

    def status(self, netlist: NetworkList) -> bool:
        """False when the list is too old for STATUS (libcni then reports nothing either)."""
        if not _at_least(netlist.cni_version, "1.1.0"):
            return False
        for plugin in netlist.plugins:
            try:
                self._run("STATUS", netlist, plugin, None, None)
            except CniError as error:
                raise _failed(plugin, "status", error) from None
        return True


@record()
class GcReport:
    deleted: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    collected: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _as_version(result: dict[str, Any], version: str) -> dict[str, Any]:
    """A cached result in the list's cniVersion (they differ only if the config changed meanwhile)."""
    cached_version = result.get("cniVersion")
    if cached_version == version or cached_version not in versions.SUPPORTED_VERSIONS \
            or version not in versions.SUPPORTED_VERSIONS:
        return result
    from ..result import parse_result, render_result
    return render_result(parse_result(result, str(cached_version), "cached result"), version)
