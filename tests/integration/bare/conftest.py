"""Tests on kube-apiserver + etcd alone: no controllers, no kubelet. Only for tests that play the
part of the Kaniko executor (which cannot be had on this machine), writing its Job's and pod's
status, or that need no node at all; nothing else may write those Jobs' and pods' status. Every
test module in this folder runs on the bare control plane."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from harness.buildah import forget_images
from harness.controlplane import ControlPlane
from harness.registry import Registry


@pytest.fixture(scope="session")
def control_plane(bare_control_plane: ControlPlane) -> ControlPlane:
    return bare_control_plane


@pytest.fixture(scope="session")
def api_client(bare_api_client: client.ApiClient) -> client.ApiClient:
    return bare_api_client


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """A registry of its own on 127.0.0.1: nothing here runs a pod, so nothing here needs the one-node cluster
    (whose registry is on the node's address), and this folder runs beside the node tests (tests/conftest.py)."""
    with Registry() as own:
        yield own
        forget_images(own.host)
