"""A tiny OCI image archive built from a root file system directory, for runtimes that
import images (containerd's ``ctr images import``) on machines with no registry.

The archive is an OCI image layout (image-spec 1.0) in a tar: ``oci-layout``, ``index.json``
and ``blobs/sha256/`` holding one uncompressed layer (the directory's tree, every entry owned
by root), the image config and the manifest. Everything is written in memory-friendly
streams; digests are the sha256 of the exact bytes stored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
from typing import Any

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"

_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x",
            "riscv64": "riscv64", "i686": "386"}


def go_arch() -> str:
    """This machine's architecture as the OCI platform names it."""
    machine = platform.machine()
    return _GO_ARCH.get(machine, machine)


def _layer_tar(rootfs: str) -> bytes:
    """The tree under ``rootfs`` as a tar (sorted, owned by root, mtimes kept, symlinks kept)."""
    buf = io.BytesIO()

    def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                arcname = os.path.relpath(path, rootfs)
                tar.add(path, arcname=arcname, recursive=False, filter=reset)
    return buf.getvalue()


def _blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _add_file(tar, f"blobs/sha256/{digest.split(':', 1)[1]}", data)
    return digest


def _add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def write_oci_archive(rootfs: str, out_path: str, tag: str = "latest",
                      cmd: tuple[str, ...] = ("/bin/sh",)) -> str:
    """Write an OCI image layout tar of ``rootfs`` to ``out_path``; returns the manifest digest.

    The index names the manifest ``tag`` (annotation ``org.opencontainers.image.ref.name``)
    and gives its platform (this machine's), so ``ctr images import`` finds and unpacks it.
    """
    layer = _layer_tar(rootfs)
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    arch = go_arch()
    config = _json({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": list(cmd), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "tests/oci_image.py", "comment": "busybox rootfs"}],
    })
    with tarfile.open(out_path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _blob(tar, layer)
        config_digest = _blob(tar, config)
        manifest = _json({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(layer)}],
        })
        manifest_digest = _blob(tar, manifest)
        index = _json({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "platform": {"architecture": arch, "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        })
        _add_file(tar, "index.json", index)
        _add_file(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
    return manifest_digest
