"""The unit tests' one stand-in for the Kubernetes API and one stand-in for a container registry.

`FakeKube` is a real `Kube` (so mypy checks every call a test makes through it) whose generated API
clients are replaced by an in-memory API server: objects by (kind, namespace, name), resourceVersions,
uids, 404 for what is absent, 409 for a taken name or a stale resourceVersion, merge patches. So the
wrapper's own logic (create-or-get, 409 and 404 handling, guarded replaces) runs as in production; only
the retry loop is skipped (its policy has its own tests). A call to an API method not faked here is an
AttributeError naming it: add the method, never a looser stand-in.

`RegistryPeer` and `serve_registry`: a local HTTP server on 127.0.0.1 answering every request with a
test's own `behave(handler, method)`; the `fake_registry` fixture (conftest.py) starts them.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, TypeVar

from kubernetes import client

from envkiln.adapters.kube import Kube
from envkiln.core.decisions.retry import RetryPolicy

T = TypeVar("T")
Key = tuple[str, str, str]  # (kind, or a custom resource's plural; namespace, "" when cluster-scoped; name)
Intercept = Callable[[str, str, str, str], None]  # (verb, kind, namespace, name), before the request is served

# The generated client's model for each core kind: what the real API client would hand back.
MODELS = {"Secret": "V1Secret", "ConfigMap": "V1ConfigMap", "Job": "V1Job", "Pod": "V1Pod", "Event": "CoreV1Event",
          "MutatingWebhookConfiguration": "V1MutatingWebhookConfiguration", "ServiceAccount": "V1ServiceAccount"}


def api_error(status: int, reason: str) -> client.ApiException:
    return client.ApiException(status=status, reason=reason)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """A JSON merge patch (RFC 7386): mappings merge, null removes, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _selected(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors only (`a=b,c=d`), as the product uses."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, _, value = term.replace("==", "=").partition("=")
        if labels.get(key) != value:
            return False
    return True


class FakeKube(Kube):
    """`Kube` over an in-memory API server. `objects` holds the JSON-ready dicts the API would serve;
    `calls` every request (verb, kind, namespace, name) in order; `writes` every write that changed the
    store (verb, kind, name). `intercept`, when set, runs before each request and may raise (a 403, a
    broken connection) or change the store (another replica's write)."""

    def __init__(self) -> None:  # no super().__init__(): nothing here reaches an API server
        self.api_client = client.ApiClient()  # for to_dict and for typed answers, as Kube's own
        self.policy = RetryPolicy()
        self.retries = Counter()
        self._sleep, self._jitter = (lambda seconds: None), (lambda: 0.0)
        self._lock = threading.Lock()
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, str, str]] = []
        self.writes: list[tuple[str, str, str]] = []
        self.intercept: Intercept | None = None
        self._versions = itertools.count(1)
        self._custom = _CustomObjects(self)
        self._core = _CoreV1(self)
        self._batch = _BatchV1(self)
        self._admission = _Admission(self)

    def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """The request, once: the retry loop has its own tests (test_retry_policy)."""
        return method(*args, **kwargs)

    # --- arranging a test: what the cluster holds before the code under test runs ----------------

    def put(self, kind: str, namespace: str, obj: Any) -> dict[str, Any]:
        """Store an object (a dict or a generated model) as it is, giving it what the API server would
        (namespace, resourceVersion, a uid unless it has one). Neither a call nor a write."""
        body: dict[str, Any] = copy.deepcopy(obj) if isinstance(obj, dict) else self.to_dict(obj)
        metadata = body.setdefault("metadata", {})
        if namespace:
            metadata["namespace"] = namespace
        metadata.setdefault("uid", f"uid-{kind.lower()}-{metadata['name']}")
        metadata["resourceVersion"] = str(next(self._versions))
        self.objects[(kind, namespace, metadata["name"])] = body
        return copy.deepcopy(body)

    def typed(self, kind: str, body: dict[str, Any]) -> Any:
        """The generated client's model of a stored object (custom resources stay dicts)."""
        model = MODELS.get(kind)
        return copy.deepcopy(body) if model is None else self.api_client.deserialize(json.dumps(body), model, None)

    # --- the API server ------------------------------------------------------------------------

    def request(self, verb: str, kind: str, namespace: str, name: str) -> None:
        self.calls.append((verb, kind, namespace, name))
        if self.intercept is not None:
            self.intercept(verb, kind, namespace, name)

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self.request("get", kind, namespace, name)
        if (kind, namespace, name) not in self.objects:
            raise api_error(404, "Not Found")
        return copy.deepcopy(self.objects[(kind, namespace, name)])

    def _stored(self, verb: str, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[(kind, namespace, body["metadata"]["name"])] = body
        self.writes.append((verb, kind, body["metadata"]["name"]))
        return copy.deepcopy(body)

    def create(self, kind: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self.request("create", kind, namespace, name)
        if (kind, namespace, name) in self.objects:
            raise api_error(409, "AlreadyExists")
        body = copy.deepcopy(body)
        metadata = body["metadata"]
        if namespace:
            metadata["namespace"] = namespace
        metadata["uid"] = f"uid-{kind.lower()}-{name}"
        metadata.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        return self._stored("create", kind, namespace, body)

    def replace(self, kind: str, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.request("update", kind, namespace, name)
        current = self.objects.get((kind, namespace, name))
        if current is None:
            raise api_error(404, "Not Found")
        version = body["metadata"].get("resourceVersion")
        if version is not None and version != current["metadata"]["resourceVersion"]:
            raise api_error(409, "Conflict")
        body = copy.deepcopy(body)
        body["metadata"] = {**current["metadata"], **body["metadata"]}
        return self._stored("update", kind, namespace, body)

    def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch; one that names a resourceVersion is refused (409) if the object moved on."""
        self.request("patch", kind, namespace, name)
        current = self.objects.get((kind, namespace, name))
        if current is None:
            raise api_error(404, "Not Found")
        version = (patch.get("metadata") or {}).get("resourceVersion")
        if version is not None and version != current["metadata"]["resourceVersion"]:
            raise api_error(409, "Conflict")
        body = copy.deepcopy(current)
        _merge(body, {key: value for key, value in patch.items() if key != "metadata"})
        _merge(body["metadata"], {k: v for k, v in (patch.get("metadata") or {}).items() if k != "resourceVersion"})
        return self._stored("patch", kind, namespace, body)

    def remove(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self.request("delete", kind, namespace, name)
        if (kind, namespace, name) not in self.objects:
            raise api_error(404, "Not Found")
        self.writes.append(("delete", kind, name))
        return self.objects.pop((kind, namespace, name))

    def select(self, kind: str, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        """Objects of a kind in a namespace (None: everywhere) whose labels match."""
        self.request("list", kind, namespace or "", "")
        return [copy.deepcopy(body) for (k, ns, _), body in sorted(self.objects.items())
                if k == kind and namespace in (None, ns)
                and _selected(body["metadata"].get("labels") or {}, label_selector)]


class _Api:
    def __init__(self, kube: FakeKube):
        self.kube = kube

    def _one(self, kind: str, body: dict[str, Any]) -> Any:
        return self.kube.typed(kind, body)

    def _many(self, kind: str, bodies: list[dict[str, Any]]) -> Any:
        return SimpleNamespace(items=[self.kube.typed(kind, body) for body in bodies])


class _CustomObjects(_Api):
    """CustomObjectsApi: custom resources as dicts, keyed by their plural."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                     name: str) -> dict[str, Any]:
        return self.kube.read(plural, namespace, name)

    def list_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                      label_selector: str = "") -> dict[str, Any]:
        return {"items": self.kube.select(plural, namespace, label_selector)}

    def list_cluster_custom_object(self, group: str, version: str, plural: str,
                                   label_selector: str = "") -> dict[str, Any]:
        return {"items": self.kube.select(plural, None, label_selector)}

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict[str, Any]) -> dict[str, Any]:
        return self.kube.create(plural, namespace, body)

    def delete_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        name: str) -> dict[str, Any]:
        return self.kube.remove(plural, namespace, name)

    def patch_namespaced_custom_object_status(self, group: str, version: str, namespace: str, plural: str,
                                              name: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.kube.patch(plural, namespace, name, body)


class _CoreV1(_Api):
    """CoreV1Api: ConfigMaps, Secrets, pods and Events, answered as the generated models."""

    def create_namespaced_config_map(self, namespace: str, body: dict[str, Any]) -> Any:
        return self._one("ConfigMap", self.kube.create("ConfigMap", namespace, body))

    def read_namespaced_config_map(self, name: str, namespace: str) -> Any:
        return self._one("ConfigMap", self.kube.read("ConfigMap", namespace, name))

    def create_namespaced_secret(self, namespace: str, body: dict[str, Any]) -> Any:
        return self._one("Secret", self.kube.create("Secret", namespace, body))

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        return self._one("Secret", self.kube.read("Secret", namespace, name))

    def replace_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any]) -> Any:
        return self._one("Secret", self.kube.replace("Secret", namespace, name, body))

    def patch_namespaced_secret(self, name: str, namespace: str, body: dict[str, Any]) -> Any:
        return self._one("Secret", self.kube.patch("Secret", namespace, name, body))

    def delete_namespaced_secret(self, name: str, namespace: str) -> Any:
        return self._one("Secret", self.kube.remove("Secret", namespace, name))

    def read_namespaced_service_account(self, name: str, namespace: str) -> Any:
        return self._one("ServiceAccount", self.kube.read("ServiceAccount", namespace, name))

    def read_namespaced_pod(self, name: str, namespace: str) -> Any:
        return self._one("Pod", self.kube.read("Pod", namespace, name))

    def list_namespaced_pod(self, namespace: str, label_selector: str = "") -> Any:
        return self._many("Pod", self.kube.select("Pod", namespace, label_selector))

    def patch_namespaced_pod(self, name: str, namespace: str, body: Any) -> Any:
        if not isinstance(body, dict):
            raise AssertionError("FakeKube: only merge patches (a mapping) are faked, not JSON patches")
        return self._one("Pod", self.kube.patch("Pod", namespace, name, body))

    def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> Any:
        return self._one("Event", self.kube.create("Event", namespace, body))

    def list_namespaced_event(self, namespace: str, field_selector: str = "") -> Any:
        wanted = dict(term.split("=", 1) for term in field_selector.split(",") if term)
        events = [event for event in self.kube.select("Event", namespace)
                  if all(str(event.get(field.split(".")[0], {}).get(field.split(".")[1])) == value
                         for field, value in wanted.items())]
        return self._many("Event", events)


class _BatchV1(_Api):
    """BatchV1Api: Jobs."""

    def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
        return self._one("Job", self.kube.create("Job", namespace, body))

    def read_namespaced_job(self, name: str, namespace: str) -> Any:
        return self._one("Job", self.kube.read("Job", namespace, name))

    def delete_namespaced_job(self, name: str, namespace: str, propagation_policy: str | None = None) -> Any:
        return self._one("Job", self.kube.remove("Job", namespace, name))

    def list_namespaced_job(self, namespace: str, label_selector: str = "") -> Any:
        return self._many("Job", self.kube.select("Job", namespace, label_selector))

    def list_job_for_all_namespaces(self, label_selector: str = "") -> Any:
        return self._many("Job", self.kube.select("Job", None, label_selector))


class _Admission(_Api):
    """AdmissionregistrationV1Api: mutating webhook configurations (cluster-scoped)."""

    def read_mutating_webhook_configuration(self, name: str) -> Any:
        return self._one("MutatingWebhookConfiguration", self.kube.read("MutatingWebhookConfiguration", "", name))

    def patch_mutating_webhook_configuration(self, name: str, body: dict[str, Any]) -> Any:
        return self._one("MutatingWebhookConfiguration",
                         self.kube.patch("MutatingWebhookConfiguration", "", name, body))


# --- a registry: a local HTTP server answering as each test says ------------------------------------

Behave = Callable[["RegistryHandler", str], None]  # (handler, "GET" or "HEAD"): answers one request


@dataclass
class RegistryPeer:
    """One local HTTP server; `behave(handler, method)` answers every request."""

    behave: Behave
    host: str = ""
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Authorization)
    in_flight: int = 0
    max_in_flight: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RegistryHandler(BaseHTTPRequestHandler):
    server: _RegistryServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self, method: str) -> None:
        peer = self.server.peer
        with peer.lock:
            peer.requests.append((method, self.path, self.headers.get("Authorization", "")))
            peer.in_flight += 1
            peer.max_in_flight = max(peer.max_in_flight, peer.in_flight)
        try:
            peer.behave(self, method)
        except OSError:  # the client hung up (deadline watchdog): expected
            pass
        finally:
            with peer.lock:
                peer.in_flight -= 1
        self.close_connection = True

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_GET(self) -> None:
        self._handle("GET")

    def answer(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"",
               method: str = "GET") -> None:
        """A whole response; the body only to a GET (a HEAD gets its headers)."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)

    def drip(self, data: bytes, every: float) -> None:
        """Send `data` a byte at a time, `every` seconds apart, until the server stops."""
        for byte in data:
            if self.server.peer.stop.wait(every):
                return
            self.wfile.write(bytes([byte]))
            self.wfile.flush()


class _RegistryServer(ThreadingHTTPServer):
    daemon_threads = True
    peer: RegistryPeer


ServeRegistry = Callable[[Behave], RegistryPeer]
# How often serve_forever looks for a shutdown request: the default 0.5 s made every fixture's teardown
# wait up to half a second.
POLL_SECONDS = 0.05


def start_registry(behave: Behave) -> tuple[RegistryPeer, Callable[[], None]]:
    """A registry on 127.0.0.1 and the function that stops it (and ends any request still dripping)."""
    httpd = _RegistryServer(("127.0.0.1", 0), RegistryHandler)
    httpd.peer = RegistryPeer(behave, host=f"127.0.0.1:{httpd.server_address[1]}")
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": POLL_SECONDS}, daemon=True).start()

    def stop() -> None:
        httpd.peer.stop.set()
        httpd.shutdown()
        httpd.server_close()
    return httpd.peer, stop
