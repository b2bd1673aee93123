"""A tiny OCI archive (one 1-file layer), so seeding "earlier builds" costs a fraction of a second.

The bench seeds signed EnvironmentBuilds with harness.records.seed_build, which pushes a real image
to get a real digest; the operator never pulls it, so its content does not matter.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    archive.addfile(info, io.BytesIO(data))


def _blob(archive: tarfile.TarFile, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    _add(archive, f"blobs/sha256/{digest}", data)
    return f"sha256:{digest}", len(data)


def tiny_archive(path: Path) -> Path:
    """Write (once) an OCI image-layout archive at `path`; returns it."""
    if path.exists():
        return path
    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as layer:
        _add(layer, "bench.txt", b"envkiln bench image\n")
    diff_id = "sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()
    layer_gz = gzip.compress(layer_tar.getvalue(), mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    tmp = path.with_suffix(".partial")
    with tarfile.open(tmp, "w") as archive:
        _add(archive, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        layer_digest, layer_size = _blob(archive, layer_gz)
        config_digest, config_size = _blob(archive, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                       "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest,
                        "size": layer_size}],
        }).encode()
        manifest_digest, manifest_size = _blob(archive, manifest)
        _add(archive, "index.json", json.dumps({
            "schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                               "digest": manifest_digest, "size": manifest_size}],
        }).encode())
    tmp.rename(path)
    return path
