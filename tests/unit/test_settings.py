"""Operator settings from ENVKILN_* variables: defaults, parsing, clear errors."""

from __future__ import annotations

import pytest

from envkiln.core.settings import DEFAULT_KANIKO_IMAGE, OperatorSettings, SettingsError


def test_defaults_work_for_a_local_cluster() -> None:
    settings = OperatorSettings.from_env({})
    assert settings.registry == "localhost:5000" and settings.builder == "kaniko"
    assert settings.effective_pull_registry == "localhost:5000"
    assert settings.kaniko_image == DEFAULT_KANIKO_IMAGE and "osscontainertools" in DEFAULT_KANIKO_IMAGE


def test_parsing() -> None:
    settings = OperatorSettings.from_env({
        "ENVKILN_REGISTRY": "registry.svc.cluster.local:5000/", "ENVKILN_PULL_REGISTRY": "localhost:5001",
        "ENVKILN_INSECURE_REGISTRY": "true", "ENVKILN_NAMESPACES": "team-a, team-b",
        "ENVKILN_KANIKO_EXTRA_ARGS": "--verbosity=debug --compressed-caching=false",
        "ENVKILN_BUILD_RETRY_LIMIT": "5", "ENVKILN_BUILDER": "local", "HOME": "/root", "ENVKILN_CACHE": "/tmp/x",
    })
    assert settings.registry == "registry.svc.cluster.local:5000" and settings.insecure_registry is True
    assert settings.effective_pull_registry == "localhost:5001"
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.kaniko_extra_args == ["--verbosity=debug", "--compressed-caching=false"]
    assert settings.build_retry_limit == 5 and settings.builder == "local"


@pytest.mark.parametrize(("environ", "expected"), [
    ({"ENVKILN_BUILDER": "docker"}, "ENVKILN_BUILDER"),
    ({"ENVKILN_BUILD_RETRY_LIMIT": "many"}, "ENVKILN_BUILD_RETRY_LIMIT"),
    ({"ENVKILN_REGISTRY": "https://registry.example.com"}, "without a scheme"),
    ({"ENVKILN_IMAGE_TEMPLATE": "{registry}/static"}, "must contain {hash}"),
    ({"ENVKILN_REGISTRY_URL": "x"}, "ENVKILN_REGISTRY_URL: unknown setting"),
    ({"ENVKILN_INSECURE_REGISTRY": "perhaps"}, "ENVKILN_INSECURE_REGISTRY"),
])
def test_bad_settings_name_the_variable(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError, match=None) as error:
        OperatorSettings.from_env(environ)
    assert expected in str(error.value)


def test_queueing_settings() -> None:
    """Kopf's per-object workers are bounded and exit soon after their object's last event."""
    defaults = OperatorSettings.from_env({})
    assert defaults.worker_limit == 40 and defaults.worker_idle_seconds == 0.05
    settings = OperatorSettings.from_env({"ENVKILN_WORKER_LIMIT": "100", "ENVKILN_WORKER_IDLE_SECONDS": "0.5"})
    assert settings.worker_limit == 100 and settings.worker_idle_seconds == 0.5
    # The start's listing comes in pages (Kopf's chunked listing); 0: one response.
    assert defaults.list_chunk_size == 500
    assert OperatorSettings.from_env({"ENVKILN_LIST_CHUNK_SIZE": "0"}).list_chunk_size == 0
    for environ in ({"ENVKILN_WORKER_LIMIT": "0"}, {"ENVKILN_WORKER_IDLE_SECONDS": "0"},
                    {"ENVKILN_LIST_CHUNK_SIZE": "-1"}):
        with pytest.raises(SettingsError, match=next(iter(environ))):
            OperatorSettings.from_env(environ)
