"""RegistryClient.read_last_layer_file: the lock a build wrote into its image's last layer, read
back with the distribution API from an in-process registry double; a layer that does not match its
digest, a layer without the file and a layer that would inflate without bound are all refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest

from envkiln.adapters.registryclient import RegistryClient, RegistryUnavailable
from fakes import Behave, RegistryHandler, ServeRegistry

LOCK = b"# envkiln lock v1\n[pip]\nnumpy==2.1.0\n"


def layer(files: dict[str, bytes], compress: bool = True) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    data = raw.getvalue()
    return gzip.compress(data, mtime=0) if compress else data


def image_registry(layers: list[bytes], tamper: bool = False) -> Behave:
    """A registry holding one image of these layers; `tamper`: each blob it serves has a byte added."""
    blobs = {"sha256:" + hashlib.sha256(b).hexdigest(): b for b in layers}
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:" + "0" * 64}, "layers": [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": len(b)}
        for d, b in blobs.items()]}).encode()

    def behave(handler: RegistryHandler, method: str) -> None:
        if "/manifests/" in handler.path:
            body = manifest
        else:
            body = blobs.get(handler.path.rsplit("/", 1)[-1], b"")
            if tamper:
                body = body + b"x"
        handler.answer(200, body=body, method=method)
    return behave


def client_for(host: str) -> RegistryClient:
    return RegistryClient(insecure_registries={host}, timeout=5)


@pytest.mark.parametrize(("case", "layers", "expected"), [
    ("last-layer-holds-the-lock", [layer({"opt/app/x": b"x"}), layer({"opt/envkiln/envkiln-lock.txt": LOCK})], LOCK),
    ("uncompressed-layer", [layer({"./opt/envkiln/envkiln-lock.txt": LOCK}, compress=False)], LOCK),
    ("only-an-earlier-layer-holds-it", [layer({"opt/envkiln/envkiln-lock.txt": LOCK}), layer({"etc/x": b"1"})], None),
    ("not-a-tar", [gzip.compress(b"not a tar at all", mtime=0)], None),
    ("no-layers", [], None),
])
def test_reads_the_file_from_the_last_layer(fake_registry: ServeRegistry, case: str, layers: list[bytes],
                                            expected: bytes | None) -> None:
    registry = fake_registry(image_registry(layers)).host
    assert client_for(registry).read_last_layer_file(f"{registry}/envkiln/x@sha256:{'1' * 64}",
                                                     "/opt/envkiln/envkiln-lock.txt") == expected


def test_a_layer_that_does_not_match_its_digest_is_refused(fake_registry: ServeRegistry) -> None:
    registry = fake_registry(image_registry([layer({"opt/envkiln/envkiln-lock.txt": LOCK})], tamper=True)).host
    with pytest.raises(RegistryUnavailable, match="does not match its digest"):
        client_for(registry).read_last_layer_file(f"{registry}/envkiln/x@sha256:{'1' * 64}",
                                                  "/opt/envkiln/envkiln-lock.txt")


def test_a_layer_that_inflates_without_bound_is_not_read(fake_registry: ServeRegistry) -> None:
    bomb = gzip.compress(b"\0" * (20 * 1024 * 1024), mtime=0)  # 20 MiB of zeros in a few KiB
    registry = fake_registry(image_registry([bomb])).host
    assert client_for(registry).read_last_layer_file(f"{registry}/envkiln/x@sha256:{'1' * 64}",
                                                     "/opt/envkiln/envkiln-lock.txt") is None
