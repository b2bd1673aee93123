"""Client loading: the one other place (beside `kube.py`) that imports the kubernetes client.

The operator loads the in-cluster config (or the kubeconfig outside a cluster); the CLI loads the
user's kubeconfig (`connect`: a file and a context of the user's choosing, time limits on every
request, and no retries below the caller's own). Everything else receives a `Kube` built on the
client returned here. `describe_failure` turns what a call can raise (an API refusal, a connection
that failed) into one line for a user.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.config.kube_config import KubeConfigLoader, KubeConfigMerger

from envkiln.adapters.kube import api_message

ApiClient = client.ApiClient
ApiError = client.ApiException

# What a call raises when no answer came: connection refused or reset, a time limit, TLS.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
API_FAILURES: tuple[type[BaseException], ...] = (ApiError, *CONNECTION_ERRORS)  # what describe_failure describes
_NAME_RESOLUTION: tuple[type[BaseException], ...] = tuple(  # urllib3 2 (its stubs here are urllib3 1's)
    getattr(urllib3.exceptions, name) for name in ("NameResolutionError",) if hasattr(urllib3.exceptions, name))
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_KUBECONFIG = "~/.kube/config"


def api_client_from_environment(connections: int | None = None) -> client.ApiClient:
    """An API client from the in-cluster config or the kubeconfig; `connections` bounds its pool
    (urllib3 opens a new TLS connection for every caller beyond it, and drops it afterwards)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    if connections is not None:
        configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


# --- the CLI's way: the user's kubeconfig, a context, time limits ------------------------------


class KubeconfigError(Exception):
    """No usable kubeconfig or context; the message names the file and what to do."""


@dataclass(frozen=True)
class Connection:
    """An API client on the chosen kubeconfig and context, and what the CLI says about it."""

    api_client: client.ApiClient
    namespace: str  # the context's namespace (in a pod: the pod's), else "default"
    server: str  # the API server's URL, for messages


@dataclass(frozen=True)
class Timeouts:
    """Time limits on every request: `connect` seconds to connect, `read` seconds for each read of an
    answer (None: no limit, as for a followed log), and, with `deadline` (a `clock()` value), never
    beyond it. The CLI's `wait` sets the deadline: its --timeout is the limit of everything it does."""

    connect: float | None = 10.0
    read: float | None = None
    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic

    def for_request(self, streaming: bool) -> tuple[float | None, float | None]:
        """(connect, read) seconds for one request; `streaming`: a followed log or a watch."""
        connect, read = self.connect, None if streaming else self.read
        if self.deadline is not None:
            left = max(0.05, self.deadline - self.clock())
            connect = left if connect is None else min(connect, left)
            read = left if read is None else min(read, left)
        return connect, read


def _kubeconfig_files(kubeconfig: str | None) -> str:
    """The file(s) to read, as a user names them (`:`-separated; `~` is the home)."""
    if kubeconfig:
        return kubeconfig
    return os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG


def _no_kubeconfig(kubeconfig: str | None) -> KubeconfigError:
    if kubeconfig:
        return KubeconfigError(f"no kubeconfig at {kubeconfig} (--kubeconfig): give the path of an existing file")
    if os.environ.get("KUBECONFIG"):
        return KubeconfigError(f"no kubeconfig at {os.environ['KUBECONFIG']} ($KUBECONFIG): point KUBECONFIG at "
                               "an existing file, or pass --kubeconfig FILE")
    return KubeconfigError(f"no kubeconfig: {DEFAULT_KUBECONFIG} does not exist and KUBECONFIG is not set; pass "
                           "--kubeconfig FILE or set KUBECONFIG (kubectl config view shows what kubectl uses)")


def _in_cluster(timeouts: Timeouts) -> Connection | None:
    """The pod's service account, when the CLI runs in a pod and no kubeconfig was named (as kubectl)."""
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        return None
    try:
        namespace = IN_CLUSTER_NAMESPACE.read_text().strip() or "default"
    except OSError:
        namespace = "default"
    return Connection(_timed_client(configuration, timeouts), namespace, str(configuration.host))


def connect(kubeconfig: str | None = None, context: str | None = None,
            timeouts: Timeouts | None = None) -> Connection:
    """An API client from the kubeconfig (`kubeconfig`, else $KUBECONFIG (several files, `:`-separated,
    merged), else ~/.kube/config) and `context` (else its current context); in a pod without a
    kubeconfig, the pod's service account. urllib3 retries nothing (the caller's retries, and its
    deadline, are the only ones); every request has `timeouts`. Raises KubeconfigError, naming the
    file and what to do, when there is nothing usable."""
    timeouts = timeouts or Timeouts()
    files = _kubeconfig_files(kubeconfig)
    try:
        merged = KubeConfigMerger(files).config
    except Exception as error:  # unreadable, not YAML, not a mapping: the merger fails in many ways
        raise KubeconfigError(f"kubeconfig {files} is not a kubeconfig ({type(error).__name__}: "
                              f"{' '.join(str(error).split())[:300]})") from None
    if merged is None:
        found = None if kubeconfig or context else _in_cluster(timeouts)
        if found is not None:
            return found
        raise _no_kubeconfig(kubeconfig)
    entries = [getattr(c, "value", c) for c in (merged.safe_get("contexts") or [])]
    names = sorted(str(c.get("name")) for c in entries if isinstance(c, dict))
    logged = _Logged()  # the loader logs (and then ignores) an exec credential plugin that fails
    logging.getLogger().addHandler(logged)
    try:
        loader = KubeConfigLoader(config_dict=merged, config_base_path=None, active_context=context)
        configuration = client.Configuration()
        loader.load_and_set(configuration)
        chosen = loader.current_context
        if logged.messages:
            raise KubeconfigError(f"kubeconfig {files}: context {context or '(current)'}: its credentials cannot "
                                  f"be had: {logged.messages[0][:300]}")
    except config.ConfigException as error:
        text = str(error)
        if context is not None and f"Expected object with name {context} in" in text and "contexts" in text:
            raise KubeconfigError(f"kubeconfig {files} has no context {context!r} (--context); its contexts: "
                                  f"{', '.join(names) or 'none'}") from None
        if context is None and "Expected key current-context" in text:
            raise KubeconfigError(f"kubeconfig {files} has no current context: pass --context NAME (its contexts: "
                                  f"{', '.join(names) or 'none'}) or run kubectl config use-context NAME") from None
        raise KubeconfigError(f"kubeconfig {files}: {_config_message(error)}") from None
    except KubeconfigError:
        raise
    except Exception as error:  # a certificate file that is not there, an exec plugin's answer...
        raise KubeconfigError(f"kubeconfig {files}: context {context or '(current)'} cannot be used "
                              f"({type(error).__name__}: {' '.join(str(error).split())[:300]})") from None
    finally:
        logging.getLogger().removeHandler(logged)
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return Connection(_timed_client(configuration, timeouts), str(namespace or "default"), str(configuration.host))


class _Logged(logging.Handler):
    """The errors logged meanwhile (kubernetes.config logs a failing exec plugin to the root logger)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


def _config_message(error: Exception) -> str:
    text = str(error)
    return text.removeprefix("Invalid kube-config file. ").strip() or "not a usable kubeconfig"


def _timed_client(configuration: Any, timeouts: Timeouts) -> client.ApiClient:
    """An ApiClient whose requests carry `timeouts` and that urllib3 never retries: its default policy
    retries a refused connection three times and sleeps a 429's Retry-After, both unbounded by any
    deadline of the caller."""
    configuration.retries = 0
    api_client = client.ApiClient(configuration)
    request: Callable[..., Any] = api_client.rest_client.request

    def timed(method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        if _request_timeout is None:
            _request_timeout = timeouts.for_request(streaming="follow=true" in url or "watch=true" in url)
        return request(method, url, *args, _request_timeout=_request_timeout, **kwargs)

    api_client.rest_client.request = timed  # type: ignore[method-assign]
    return api_client


def api_client_from_kubeconfig(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client from the user's kubeconfig (the CLI's way; see `connect`)."""
    return connect(kubeconfig, context).api_client


# --- failures, in a line --------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What an API call's exception means: `status` (None: no answer came) and one line for a user."""

    status: int | None
    message: str


def _reason(error: BaseException) -> str:
    """Why no answer came, in a few words (urllib3 nests the cause in MaxRetryError.reason)."""
    cause: BaseException = error
    while isinstance(cause, urllib3.exceptions.MaxRetryError) and cause.reason is not None:
        cause = cause.reason
    if isinstance(cause, _NAME_RESOLUTION):
        return "the host name does not resolve"
    text = str(cause)
    # Before ConnectTimeoutError: urllib3's NewConnectionError is one (for compatibility).
    if isinstance(cause, urllib3.exceptions.NewConnectionError | ConnectionError) and "timed out" not in text:
        for words in ("Connection refused", "No route to host", "Network is unreachable", "Connection reset"):
            if words in text:
                return words.lower()
        return text.split("Failed to establish a new connection: ", 1)[-1][:200]
    if isinstance(cause, urllib3.exceptions.ConnectTimeoutError | urllib3.exceptions.NewConnectionError):
        return "no connection within the time limit"
    if isinstance(cause, urllib3.exceptions.ReadTimeoutError | TimeoutError):
        return "no answer within the time limit"
    if isinstance(cause, urllib3.exceptions.SSLError):
        return f"TLS failed ({text.split(': ', 1)[-1][:200]})"
    if isinstance(cause, urllib3.exceptions.ProtocolError):
        return "the connection broke"
    return f"{type(cause).__name__}: {str(cause)[:200]}"


def describe_failure(error: BaseException, server: str = "") -> Failure | None:
    """One line for an API refusal or a connection failure; None for anything else."""
    where = f" {server}" if server else ""
    if isinstance(error, ApiError):
        status = int(error.status) if error.status else None
        if status is None:  # the client's own ApiException without an answer
            return Failure(None, f"the API server{where} did not answer: {error.reason}")
        hints = {401: " (the kubeconfig's credentials were refused: log in again)",
                 403: " (ask for RBAC access to envkiln.dev resources in this namespace)"}
        return Failure(status, f"the API server{where} answered {status}: {api_message(error)}{hints.get(status, '')}")
    if isinstance(error, CONNECTION_ERRORS):
        return Failure(None, f"cannot reach the API server{where}: {_reason(error)}")
    return None
