"""The result cache, in libcni's format, so cni-bridge and cnitool can read each other's entries.

``CACHE_DIR/results/NETNAME-CONTAINERID-IFNAME`` holds ``kind: cniCacheV1``, the list's config
(base64, as Go encodes bytes), the runtime arguments and the final ADD result. Our entries add
``cniBridgeBootId``, the boot they were written in (libcni ignores keys it does not know): an
attachment cached in an earlier boot is gone, whatever its netns path says now.
"""

from __future__ import annotations

import json
import os

from ..errors import IO_FAILURE, CniError
from ..records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_CACHE_DIR = "/var/lib/cni"
KIND = "cniCacheV1"
BOOT_KEY = "cniBridgeBootId"


@record(frozen=True)
class CachedAttachment:
    network: str
    container_id: str
    ifname: str
    netns: str
    cni_args: tuple[tuple[str, str], ...]
    capability_args: dict[str, Any]
    result: dict[str, Any] | None
    boot_id: str | None = None  # None: written by another tool, or when the boot was unknown

    @property
    def from_an_earlier_boot(self) -> bool:
        """Certainly made before this boot: both boots known and different."""
        if self.boot_id is None:
            return False
        from ..boot import current_boot_id
        boot = current_boot_id()
        return boot is not None and boot != self.boot_id


class ResultCache:
    def __init__(self, cache_dir: str) -> None:
        self.directory = os.path.join(cache_dir, "results")

    def path(self, network: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.directory, f"{network}-{container_id}-{ifname}")

    def write(self, network: str, container_id: str, ifname: str, netns: str, config: bytes,
              cni_args: tuple[tuple[str, str], ...], capability_args: dict[str, Any],
              result: dict[str, Any]) -> None:
        import base64
        entry: dict[str, Any] = {"kind": KIND, "containerId": container_id,
                                 "config": base64.b64encode(config).decode(), "ifName": ifname,
                                 "networkName": network, "netns": netns}
        if cni_args:
            entry["cniArgs"] = [list(pair) for pair in cni_args]
        if capability_args:
            entry["capabilityArgs"] = capability_args
        entry["result"] = result
        from ..boot import current_boot_id
        boot = current_boot_id()
        if boot is not None:
            entry[BOOT_KEY] = boot
        path = self.path(network, container_id, ifname)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            temporary = f"{path}.tmp{os.getpid()}"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(entry, f)
            os.replace(temporary, path)
        except OSError as exc:
            raise CniError(IO_FAILURE, f"failed to cache the result of network {network!r}", str(exc)) from None

    def read(self, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
        return self._load(self.path(network, container_id, ifname))

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        try:
            os.unlink(self.path(network, container_id, ifname))
        except FileNotFoundError:
            pass

    def attachments(self, network: str) -> list[CachedAttachment]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.startswith(f"{network}-"):
                entry = self._load(os.path.join(self.directory, name))
                if entry is not None and entry.network == network:
                    found.append(entry)
        return found

    @staticmethod
    def _load(path: str) -> CachedAttachment | None:
        """An entry, or None when there is none or it is not a cniCacheV1 entry (libcni ignores those too)."""
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return None
        if not isinstance(doc, dict) or doc.get("kind") != KIND:
            return None
        pairs = doc.get("cniArgs") or []
        result = doc.get("result")
        boot = doc.get(BOOT_KEY)
        return CachedAttachment(
            network=str(doc.get("networkName", "")), container_id=str(doc.get("containerId", "")),
            ifname=str(doc.get("ifName", "")), netns=str(doc.get("netns", "")),
            cni_args=tuple((str(p[0]), str(p[1])) for p in pairs if isinstance(p, list) and len(p) == 2),
            capability_args=doc.get("capabilityArgs") or {},
            result=result if isinstance(result, dict) and result else None,
            boot_id=boot if isinstance(boot, str) and boot else None)
