"""The registry client against a small in-process HTTP registry double (pure protocol logic:
auth challenges, digest fallback, the three outcomes). The real registry is in tests/integration."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

import pytest

from envkiln.adapters.registryclient import RegistryClient, RegistryUnavailable, credentials_from_docker_config
from fakes import RegistryHandler, RegistryPeer, ServeRegistry

MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


@dataclass
class Registry:
    """The registry double: `mode` says how it answers (plain | nodigest | bearer | basic | error500 |
    unauthorized); `peer` records every request it got."""

    peer: RegistryPeer
    mode: str = "plain"

    @property
    def host(self) -> str:
        return self.peer.host

    def behave(self, handler: RegistryHandler, method: str) -> None:
        if handler.path.startswith("/token"):
            if "scope=repository%3Aenvkiln%2Fenv_x%3Apull" not in handler.path:
                handler.answer(400, method=method)  # the token is asked for the repository's pull scope
                return
            handler.answer(200, body=json.dumps({"token": "tok123"}).encode(), method=method)
            return
        auth = handler.headers.get("Authorization", "")
        if self.mode == "error500":
            handler.answer(503, method=method)
        elif self.mode == "unauthorized" or (self.mode == "bearer" and auth != "Bearer tok123") or (
                self.mode == "basic" and auth != "Basic " + base64.b64encode(b"u:p").decode()):
            challenge = {"WWW-Authenticate": f'Bearer realm="http://{self.host}/token",service="test"'}
            handler.answer(401, challenge if self.mode == "bearer" else {}, method=method)
        elif "missing" in handler.path:
            handler.answer(404, method=method)
        else:
            headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
            if self.mode != "nodigest":
                headers["Docker-Content-Digest"] = DIGEST
            handler.answer(200, headers, MANIFEST, method)


@pytest.fixture()
def server(fake_registry: ServeRegistry) -> Registry:
    double = Registry(fake_registry(lambda handler, method: double.behave(handler, method)))
    return double


def client_for(host: str, **kwargs: Any) -> RegistryClient:
    return RegistryClient(insecure_registries={host}, timeout=2, **kwargs)


def test_found_and_missing(server: Registry) -> None:
    registry = client_for(server.host)
    found = registry.lookup(f"{server.host}/envkiln/env_x:tag")
    assert found.found and found.digest == DIGEST
    assert registry.lookup(f"{server.host}/envkiln/missing:tag").found is False


def test_digest_fallback_hashes_the_body(server: Registry) -> None:
    server.mode = "nodigest"
    assert client_for(server.host).lookup(f"{server.host}/envkiln/env_x:tag").digest == DIGEST


def test_bearer_token_flow(server: Registry) -> None:
    server.mode = "bearer"
    assert client_for(server.host).lookup(f"{server.host}/envkiln/env_x:tag").found
    assert server.peer.requests[-1][2] == "Bearer tok123"
    assert [method for method, path, _ in server.peer.requests if path.startswith("/token")] == ["GET"]


def test_basic_auth_from_docker_config(server: Registry) -> None:
    server.mode = "basic"
    config = json.dumps({"auths": {f"http://{server.host}": {"auth": base64.b64encode(b"u:p").decode()}}})
    credentials = credentials_from_docker_config(config)
    assert credentials[server.host].username == "u"
    assert client_for(server.host, credentials=credentials).lookup(f"{server.host}/envkiln/env_x:tag").found


def test_unavailable_is_neither_found_nor_missing(server: Registry) -> None:
    server.mode = "error500"
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        client_for(server.host).lookup(f"{server.host}/envkiln/env_x:tag")
    server.mode = "unauthorized"
    with pytest.raises(RegistryUnavailable, match="401"):
        client_for(server.host).lookup(f"{server.host}/envkiln/env_x:tag")
    with pytest.raises(RegistryUnavailable, match="unavailable"):
        client_for("127.0.0.1:1").lookup("127.0.0.1:1/envkiln/env_x:tag")


def test_positive_answers_are_cached_and_negatives_are_not(server: Registry) -> None:
    now = [0.0]
    registry = client_for(server.host, cache_ttl=30, clock=lambda: now[0])
    for _ in range(5):
        registry.lookup(f"{server.host}/envkiln/env_x:tag")
    assert registry.requests_made == 1
    now[0] = 31
    registry.lookup(f"{server.host}/envkiln/env_x:tag")
    assert registry.requests_made == 2
    for _ in range(3):
        registry.lookup(f"{server.host}/envkiln/missing:tag")
    assert registry.requests_made == 5


def test_concurrent_lookups_of_one_image_make_one_request(server: Registry) -> None:
    registry = client_for(server.host, cache_ttl=30)
    threads = [threading.Thread(target=registry.lookup, args=(f"{server.host}/envkiln/env_x:tag",)) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.requests_made == 1
