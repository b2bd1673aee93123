"""The registry client against misbehaving registries on real local sockets (127.0.0.1):
redirects to another origin are refused (and never carry our credentials there), a token realm
is asked only on the registry's own origin, a lookup has one total deadline however slowly the
peer drips bytes, lookups in flight are bounded, a tenant-named registry on loopback or a name
resolving to the metadata service is refused before any connection, and one slow host gets its
per-host share of slots while another host's lookups stay fast."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from envkiln.adapters.registryclient import (
    MAX_BODY_BYTES,
    Credentials,
    RegistryAddressRefused,
    RegistryClient,
    RegistryRealmRefused,
    RegistryRedirectRefused,
    RegistryUnavailable,
)
from fakes import Behave, ServeRegistry
from fakes import RegistryHandler as Handler
from fakes import RegistryPeer as Peer

MANIFEST = json.dumps({"schemaVersion": 2, "layers": []}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
OTHER = json.dumps({"schemaVersion": 2, "layers": [], "evil": True}).encode()
BASIC = "Basic " + base64.b64encode(b"u:p").decode()
SLACK = 0.7  # scheduling slack allowed past the deadline

def manifest(handler: Handler, method: str, digest: bool = True, body: bytes = MANIFEST) -> None:
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    if digest:
        headers["Docker-Content-Digest"] = DIGEST
    handler.answer(200, headers, body, method)


def client(*hosts: str, timeout: float = 2.0, **kwargs: Any) -> RegistryClient:
    return RegistryClient(insecure_registries=set(hosts), timeout=timeout, **kwargs)


# --- 1. redirects ------------------------------------------------------------------------------

def redirect_to(location: Callable[[Peer], str], only: str | None = None) -> Callable[[Peer], Behave]:
    """A registry that redirects (only `only` method, or every request) to location(target)."""

    def make(target: Peer) -> Behave:
        def behave(handler: Handler, method: str) -> None:
            if only is None or method == only:
                handler.answer(307, {"Location": location(target) + handler.path}, b"", method)
            else:
                manifest(handler, method, digest=False)
        return behave
    return make


CROSS_ORIGIN = [
    pytest.param(redirect_to(lambda t: f"http://{t.host}"), id="other-port"),
    pytest.param(redirect_to(lambda t: f"http://localhost:{t.host.split(':')[1]}"), id="other-host-name"),
    pytest.param(redirect_to(lambda t: f"https://{t.host}"), id="other-scheme"),
    pytest.param(redirect_to(lambda t: f"//{t.host}"), id="scheme-relative-other-port"),
    pytest.param(redirect_to(lambda t: f"http://{t.host}", only="GET"), id="digest-fallback-GET-other-port"),
]


@pytest.mark.parametrize("redirecting", CROSS_ORIGIN)
def test_redirect_to_another_origin_is_refused_and_never_reaches_it(
        fake_registry: ServeRegistry, redirecting: Callable[[Peer], Behave]) -> None:
    target = fake_registry(lambda h, m: manifest(h, m, body=OTHER))  # would answer "found" with another body
    registry = fake_registry(lambda h, m: None)
    registry.behave = redirecting(target)
    credentials = {registry.host: Credentials("u", "p")}
    start = time.monotonic()
    with pytest.raises(RegistryRedirectRefused, match="another origin") as raised:
        client(registry.host, credentials=credentials).lookup(f"{registry.host}/envkiln/env_x:tag")
    assert isinstance(raised.value, RegistryUnavailable)  # callers' existing handling applies
    assert target.requests == []  # not followed: neither the request nor our credentials went there
    assert registry.requests and all(auth == BASIC for _, _, auth in registry.requests)
    assert time.monotonic() - start < 1


def test_redirect_within_the_origin_is_followed_and_keeps_the_method(fake_registry: ServeRegistry) -> None:
    def behave(handler: Handler, method: str) -> None:
        if "/old/" in handler.path:
            handler.answer(301, {"Location": handler.path.replace("/old/", "/new/")}, b"", method)
        else:
            manifest(handler, method)
    registry = fake_registry(behave)
    found = client(registry.host).lookup(f"{registry.host}/old/env_x:tag")
    assert found.found and found.digest == DIGEST
    assert [(m, p) for m, p, _ in registry.requests] == [
        ("HEAD", "/v2/old/env_x/manifests/tag"), ("HEAD", "/v2/new/env_x/manifests/tag")]


def test_a_redirected_manifest_body_is_never_hashed_into_a_digest(fake_registry: ServeRegistry) -> None:
    # HEAD says 200 without a digest; the GET is redirected within the origin to another document.
    def behave(handler: Handler, method: str) -> None:
        if method == "GET" and "/elsewhere/" not in handler.path:
            handler.answer(302, {"Location": "/v2/elsewhere/manifests/x"}, b"", method)
        else:
            manifest(handler, method, digest=False, body=OTHER)
    registry = fake_registry(behave)
    with pytest.raises(RegistryUnavailable, match="redirect"):
        client(registry.host).lookup(f"{registry.host}/envkiln/env_x:tag")


def test_token_realm_redirecting_to_another_origin_is_refused(fake_registry: ServeRegistry) -> None:
    elsewhere = fake_registry(lambda h, m: h.answer(200, {}, json.dumps({"token": "stolen"}).encode(), m))

    def behave(handler: Handler, method: str) -> None:
        if handler.path.startswith("/token"):  # the realm is the registry's own, but redirects away
            handler.answer(302, {"Location": f"http://{elsewhere.host}/token"}, b"", method)
            return
        handler.answer(401, {"WWW-Authenticate": f'Bearer realm="http://{registry.host}/token"'}, b"", method)
    registry = fake_registry(behave)
    with pytest.raises(RegistryRedirectRefused) as raised:
        client(registry.host, credentials={registry.host: Credentials("u", "p")}).lookup(
            f"{registry.host}/envkiln/env_x:tag")
    assert elsewhere.requests == []
    assert elsewhere.host not in str(raised.value), "the redirect's target came from the registry: not quoted"


@pytest.mark.parametrize("realm", [
    pytest.param(lambda other: f"http://{other.host}/token", id="other-port"),
    pytest.param(lambda other: f"http://localhost:{other.host.split(':')[1]}/token", id="other-host"),
    pytest.param(lambda other: "http://169.254.169.254/latest/meta-data/", id="metadata-service"),
    pytest.param(lambda other: "file:///etc/passwd", id="file-scheme"),
])
def test_a_token_realm_on_another_origin_is_refused_and_gets_no_credentials(
        fake_registry: ServeRegistry, realm: Callable[[Peer], str]) -> None:
    other = fake_registry(lambda h, m: h.answer(200, {}, json.dumps({"token": "tok"}).encode(), m))
    registry = fake_registry(lambda h, m: h.answer(401, {"WWW-Authenticate": f'Bearer realm="{realm(other)}"'}, b"", m))
    start = time.monotonic()
    with pytest.raises(RegistryRealmRefused) as raised:
        client(registry.host, credentials={registry.host: Credentials("u", "p")}).lookup(
            f"{registry.host}/envkiln/env_x:tag")
    assert isinstance(raised.value, RegistryUnavailable)
    assert other.requests == [], "nothing (and no credential) went to the realm"
    assert "169.254" not in str(raised.value) and other.host not in str(raised.value)
    assert time.monotonic() - start < 1


# --- 2. one total deadline per lookup ---------------------------------------------------------

HEADERS = b"HTTP/1.1 200 OK\r\nDocker-Content-Digest: " + DIGEST.encode() + b"\r\nX-Pad: " + b"a" * 60 + b"\r\n\r\n"


def drip_headers(handler: Handler, method: str) -> None:
    handler.drip(HEADERS, every=0.1)  # ~11 s in all, no single gap near the timeout


def drip_body(handler: Handler, method: str) -> None:
    if method == "HEAD":
        manifest(handler, method, digest=False)
        return
    handler.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(MANIFEST)}\r\n\r\n".encode())
    handler.drip(MANIFEST, every=0.25)  # ~10 s in all


def drip_body_without_length(handler: Handler, method: str) -> None:
    # No Content-Length: a body cut short by the deadline would look complete; it must not be hashed.
    if method == "HEAD":
        manifest(handler, method, digest=False)
        return
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    handler.drip(MANIFEST, every=0.25)


def sleep_forever(handler: Handler, method: str) -> None:
    handler.server.peer.stop.wait(30)  # accepts, reads the request, never answers


SLOW = [
    pytest.param(drip_headers, id="drip-status-and-headers"),
    pytest.param(drip_body, id="drip-body-of-digest-fallback"),
    pytest.param(drip_body_without_length, id="drip-body-without-length"),
    pytest.param(sleep_forever, id="sleep"),
]


@pytest.mark.parametrize("behave", SLOW)
def test_a_slow_registry_cannot_hold_a_lookup_past_its_deadline(
        fake_registry: ServeRegistry, behave: Behave) -> None:
    registry = fake_registry(behave)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="lookup deadline"):
        client(registry.host, timeout=1.0).lookup(f"{registry.host}/envkiln/env_x:tag")
    assert time.monotonic() - start < 1.0 + SLACK


def test_the_token_fetch_counts_against_the_same_deadline(fake_registry: ServeRegistry) -> None:
    def behave(handler: Handler, method: str) -> None:
        if handler.path.startswith("/token"):  # the registry's own token endpoint, dripping
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            handler.drip(json.dumps({"token": "tok"}).encode(), every=0.2)
            return
        time.sleep(0.4)  # the manifest request itself takes part of the budget
        handler.answer(401, {"WWW-Authenticate": f'Bearer realm="http://{registry.host}/token"'}, b"", method)
    registry = fake_registry(behave)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="deadline"):
        client(registry.host, timeout=1.0).lookup(f"{registry.host}/envkiln/env_x:tag")
    assert time.monotonic() - start < 1.0 + SLACK


def test_a_slow_but_timely_answer_still_counts(fake_registry: ServeRegistry) -> None:
    def behave(handler: Handler, method: str) -> None:
        time.sleep(0.3)
        manifest(handler, method)
    registry = fake_registry(behave)
    assert client(registry.host, timeout=2.0).lookup(f"{registry.host}/envkiln/env_x:tag").digest == DIGEST


def test_an_oversized_manifest_is_not_read_into_memory(fake_registry: ServeRegistry) -> None:
    registry = fake_registry(lambda h, m: manifest(h, m, digest=False, body=b" " * (MAX_BODY_BYTES + 1)))
    with pytest.raises(RegistryUnavailable, match="larger than"):
        client(registry.host, timeout=5.0).lookup(f"{registry.host}/envkiln/env_x:tag")


# --- 3. bounded concurrency --------------------------------------------------------------------

def test_at_most_max_concurrent_lookups_are_in_flight(fake_registry: ServeRegistry) -> None:
    def behave(handler: Handler, method: str) -> None:
        time.sleep(0.2)
        manifest(handler, method)
    registry = fake_registry(behave)
    registry_client = client(registry.host, timeout=5.0, max_concurrent=2)
    results: list[object] = []
    threads = [threading.Thread(target=lambda i=i: results.append(
        registry_client.lookup(f"{registry.host}/envkiln/env_{i}:tag"))) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and registry.max_in_flight == 2


def test_waiting_for_a_slot_is_bounded_by_the_deadline(fake_registry: ServeRegistry) -> None:
    registry = fake_registry(sleep_forever)
    registry_client = client(registry.host, timeout=1.0, max_concurrent=1)
    holder_error: list[BaseException] = []

    def hold() -> None:
        try:
            registry_client.lookup(f"{registry.host}/envkiln/holder:tag")
        except RegistryUnavailable as error:
            holder_error.append(error)
    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        registry_client.lookup(f"{registry.host}/envkiln/waiter:tag")
    assert time.monotonic() - start < 1.0 + SLACK
    holder.join()
    assert holder_error  # the holder hit its own deadline: nobody starves forever


def test_no_free_slot_is_a_clear_unavailable_error(fake_registry: ServeRegistry) -> None:
    registry = fake_registry(manifest)
    registry_client = client(registry.host, timeout=0.5, max_concurrent=1)
    registry_client._shares.slots.acquire()  # another lookup holds the only slot
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="1 registry lookups already in flight"):
        registry_client.lookup(f"{registry.host}/envkiln/env_x:tag")
    assert 0.4 < time.monotonic() - start < 0.5 + SLACK
    assert registry.requests == []
    registry_client._shares.slots.release()
    assert registry_client.lookup(f"{registry.host}/envkiln/env_x:tag").found


def test_cache_hits_need_no_slot(fake_registry: ServeRegistry) -> None:
    registry = fake_registry(manifest)
    registry_client = client(registry.host, max_concurrent=1)
    registry_client.lookup(f"{registry.host}/envkiln/env_x:tag")
    registry_client._shares.slots.acquire()
    assert registry_client.lookup(f"{registry.host}/envkiln/env_x:tag").found


@pytest.mark.parametrize("kwargs", [{"max_concurrent": 0}, {"timeout": 0}])
def test_nonsense_limits_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RegistryClient(**kwargs)


# --- 4. addresses a tenant may not name --------------------------------------------------------

def test_a_tenant_registry_on_loopback_is_refused_before_any_connection() -> None:
    with socket.socket() as listener:  # would accept a connection if one were made
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        host = f"127.0.0.1:{listener.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(RegistryAddressRefused) as raised:
            RegistryClient(timeout=2.0).lookup(f"{host}/team/base:1")  # a tenant's base image: not trusted
        assert time.monotonic() - start < 0.5
        message = str(raised.value)
        assert "loopback" in message and "ENVKILN_ALLOWED_PRIVATE_HOSTS" in message
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()


def test_a_name_resolving_to_the_metadata_service_is_refused() -> None:
    asked: list[str] = []

    def resolver(host: str, port: int, timeout: float) -> list[tuple[int, tuple[Any, ...]]]:
        asked.append(host)
        return [(socket.AF_INET, ("169.254.169.254", port))]
    with pytest.raises(RegistryAddressRefused, match="link-local"):
        RegistryClient(timeout=2.0, resolver=resolver).lookup("registry.evil.example/team/base:1")
    assert asked == ["registry.evil.example"], "resolved once; nothing connected"


@pytest.mark.parametrize("reference", ["localhost:5000/x:1", "registry.kube-system.svc:5000/x:1",
                                       "metadata.google.internal/x:1", "0.0.0.0:5000/x:1", "[::1]:5000/x:1"])
def test_cluster_names_and_special_literals_are_refused_without_dns(reference: str) -> None:
    def resolver(host: str, port: int, timeout: float) -> list[tuple[int, tuple[Any, ...]]]:
        raise AssertionError("no DNS query for a name refused as such")
    with pytest.raises(RegistryAddressRefused):
        RegistryClient(timeout=2.0, resolver=resolver).lookup(reference)


def test_the_operators_own_registries_are_not_checked(fake_registry: ServeRegistry) -> None:
    registry = fake_registry(manifest)  # on loopback, as the operator's own registry may be
    assert client(registry.host).lookup(f"{registry.host}/envkiln/env_x:tag").found


# --- 5. a per-host share: one slow host cannot take every slot ---------------------------------

def test_a_slow_host_gets_its_share_and_other_hosts_stay_fast(fake_registry: ServeRegistry) -> None:
    hostile = fake_registry(sleep_forever)
    victim = fake_registry(manifest)
    victim_host = f"localhost:{victim.host.split(':')[1]}"  # another host name for the same loopback server
    registry_client = client(hostile.host, victim_host, timeout=3.0, max_concurrent=4, per_host=2)
    errors: list[BaseException] = []

    def hang(i: int) -> None:
        try:
            registry_client.lookup(f"{hostile.host}/envkiln/slow_{i}:tag")
        except RegistryUnavailable as error:
            errors.append(error)
    holders = [threading.Thread(target=hang, args=(i,)) for i in range(2)]
    for thread in holders:
        thread.start()
    wait_until(lambda: hostile.in_flight == 2)
    start = time.monotonic()
    with pytest.raises(RegistryUnavailable, match="its share"):
        registry_client.lookup(f"{hostile.host}/envkiln/slow_3:tag")
    assert time.monotonic() - start < 0.3, "the hostile host's third lookup fails at once"
    for i in range(5):
        start = time.monotonic()
        assert registry_client.lookup(f"{victim_host}/envkiln/env_{i}:tag").found
        assert time.monotonic() - start < 0.5, "the victim host is not slowed"
    assert hostile.max_in_flight == 2
    for thread in holders:
        thread.join()
    assert len(errors) == 2 and all("deadline" in str(e) for e in errors)


def test_the_operators_own_registry_has_no_per_host_share(fake_registry: ServeRegistry) -> None:
    def behave(handler: Handler, method: str) -> None:
        time.sleep(0.3)
        manifest(handler, method)
    registry = fake_registry(behave)
    registry_client = client(registry.host, timeout=5.0, max_concurrent=4, per_host=1,
                             trusted_registries={registry.host})
    threads = [threading.Thread(target=registry_client.lookup, args=(f"{registry.host}/envkiln/env_{i}:tag",))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.max_in_flight == 4


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)
