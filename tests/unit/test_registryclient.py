"""The registry client against a small in-process HTTP registry double (pure protocol logic:
auth challenges, digest fallback, the three outcomes). The real registry is in tests/integration."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from envkiln.adapters.registryclient import RegistryClient, RegistryUnavailable, credentials_from_docker_config

MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class Behaviour:
    mode = "plain"  # plain | nodigest | bearer | basic | error500 | unauthorized
    seen_auth: list[str] = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def _manifest(self, with_body: bool) -> None:
        auth = self.headers.get("Authorization", "")
        Behaviour.seen_auth.append(auth)
        mode = Behaviour.mode
        if mode == "error500":
            self.send_response(503)
            self.end_headers()
            return
        if mode == "unauthorized" or (mode == "bearer" and auth != "Bearer tok123") or (
                mode == "basic" and auth != "Basic " + base64.b64encode(b"u:p").decode()):
            self.send_response(401)
            if mode == "bearer":
                port = self.server.server_address[1]
                self.send_header("WWW-Authenticate",
                                 f'Bearer realm="http://127.0.0.1:{port}/token",service="test"')
            self.end_headers()
            return
        if "missing" in self.path:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        if mode != "nodigest":
            self.send_header("Docker-Content-Digest", DIGEST)
        self.send_header("Content-Length", str(len(MANIFEST)))
        self.end_headers()
        if with_body:
            self.wfile.write(MANIFEST)

    def do_HEAD(self) -> None:
        self._manifest(False)

    def do_GET(self) -> None:
        if self.path.startswith("/token"):
            assert "scope=repository%3Aenvkiln%2Fenv_x%3Apull" in self.path
            body = json.dumps({"token": "tok123"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self._manifest(True)


@pytest.fixture()
def server() -> Iterator[str]:
    Behaviour.mode, Behaviour.seen_auth = "plain", []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def client_for(host: str, **kwargs: object) -> RegistryClient:
    return RegistryClient(insecure_registries={host}, timeout=2, **kwargs)  # type: ignore[arg-type]


def test_found_and_missing(server: str) -> None:
    registry = client_for(server)
    found = registry.lookup(f"{server}/envkiln/env_x:tag")
    assert found.found and found.digest == DIGEST
    assert registry.lookup(f"{server}/envkiln/missing:tag").found is False


def test_digest_fallback_hashes_the_body(server: str) -> None:
    Behaviour.mode = "nodigest"
    assert client_for(server).lookup(f"{server}/envkiln/env_x:tag").digest == DIGEST


def test_bearer_token_flow(server: str) -> None:
    Behaviour.mode = "bearer"
    assert client_for(server).lookup(f"{server}/envkiln/env_x:tag").found
    assert Behaviour.seen_auth[-1] == "Bearer tok123"


def test_basic_auth_from_docker_config(server: str) -> None:
    Behaviour.mode = "basic"
    config = json.dumps({"auths": {f"http://{server}": {"auth": base64.b64encode(b"u:p").decode()}}})
    credentials = credentials_from_docker_config(config)
    assert credentials[server].username == "u"
    assert client_for(server, credentials=credentials).lookup(f"{server}/envkiln/env_x:tag").found


def test_unavailable_is_neither_found_nor_missing(server: str) -> None:
    Behaviour.mode = "error500"
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        client_for(server).lookup(f"{server}/envkiln/env_x:tag")
    Behaviour.mode = "unauthorized"
    with pytest.raises(RegistryUnavailable, match="401"):
        client_for(server).lookup(f"{server}/envkiln/env_x:tag")
    with pytest.raises(RegistryUnavailable, match="unavailable"):
        client_for("127.0.0.1:1").lookup("127.0.0.1:1/envkiln/env_x:tag")


def test_positive_answers_are_cached_and_negatives_are_not(server: str) -> None:
    now = [0.0]
    registry = client_for(server, cache_ttl=30, clock=lambda: now[0])
    for _ in range(5):
        registry.lookup(f"{server}/envkiln/env_x:tag")
    assert registry.requests_made == 1
    now[0] = 31
    registry.lookup(f"{server}/envkiln/env_x:tag")
    assert registry.requests_made == 2
    for _ in range(3):
        registry.lookup(f"{server}/envkiln/missing:tag")
    assert registry.requests_made == 5


def test_concurrent_lookups_of_one_image_make_one_request(server: str) -> None:
    registry = client_for(server, cache_ttl=30)
    threads = [threading.Thread(target=registry.lookup, args=(f"{server}/envkiln/env_x:tag",)) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.requests_made == 1
