"""Client loading: the one other place (beside `kube.py`) that imports the kubernetes client.

The operator loads the in-cluster config (or the kubeconfig outside a cluster); the CLI loads the
user's kubeconfig. Everything else receives a `Kube` built on the client returned here.
"""

from __future__ import annotations

from kubernetes import client, config

ApiClient = client.ApiClient


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


def api_client_from_kubeconfig() -> client.ApiClient:
    """An API client from the user's kubeconfig (the CLI's way)."""
    api_client: client.ApiClient = config.new_client_from_config()
    return api_client


def kubeconfig_namespace() -> str:
    """The namespace of the kubeconfig's current context, or `default`."""
    _, active = config.list_kube_config_contexts()
    namespace = (active or {}).get("context", {}).get("namespace")
    return str(namespace) if namespace else "default"
