"""The local builder: buildah on the operator's host, for development clusters and tests.

Builds run in a bounded thread pool (max concurrent builds). A build that this process
does not know about is reported MISSING, so a restarted operator starts it again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from envkiln.adapters.builders import AttemptResult, AttemptState, tail
from envkiln.adapters.builders.buildah_cli import BuildFailed, build_and_push
from envkiln.adapters.kube import Kube
from envkiln.core.models import BuildContext, EnvironmentBuildSpec
from envkiln.core.names import CONTEXT_TREE_KEY
from envkiln.core.render import LockLocation, lock_location
from envkiln.core.settings import OperatorSettings

log = logging.getLogger(__name__)


class ContextError(RuntimeError):
    pass


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600)


def unpack_tree(archive: bytes, into: Path) -> None:
    """A ConfigMap context's nested tree (names.CONTEXT_TREE_KEY), as the Job builders' `context` container
    unpacks it: absolute and `..` members refused, never the archive's owners or unsafe modes (the `data`
    filter also refuses links that leave the context)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    raise ContextError(f"the build context's {CONTEXT_TREE_KEY} has a member with an absolute path "
                                       f"or '..' ({member.name!r}); nothing was built")
            tar.extractall(into, filter="data")
    except tarfile.TarError as error:  # not a tar, or a member the `data` filter refuses
        raise ContextError(f"the build context's {CONTEXT_TREE_KEY}: {error}; nothing was built") from None


def materialise_context(spec: EnvironmentBuildSpec, namespace: str, kube: Kube, into: Path) -> str:
    """Write the build context into `into`; returns the Dockerfile path inside it."""
    user: BuildContext | None = spec.plan.context
    if user is None:
        (into / "Dockerfile").write_text(spec.plan.dockerfile)
        for file in spec.plan.files:
            (into / file.path).write_text(file.content)
        return "Dockerfile"
    if user.config_map is not None:
        configmap = kube.read_configmap(namespace, user.config_map.name)
        if configmap is None:
            raise ContextError(f"ConfigMap {user.config_map.name} not found")
        import base64
        files: dict[str, bytes] = {key: value.encode("utf-8") for key, value in (configmap.data or {}).items()}
        files.update({key: base64.b64decode(value) for key, value in (configmap.binary_data or {}).items()})
        for key, content in files.items():
            if key != CONTEXT_TREE_KEY:
                (into / key).write_bytes(content)
        if CONTEXT_TREE_KEY in files:
            unpack_tree(files[CONTEXT_TREE_KEY], into)
        return user.dockerfile_path
    if user.git is not None:
        _run("git", "clone", "--quiet", user.git.url, str(into / "repo"))
        _run("git", "-C", str(into / "repo"), "checkout", "--quiet", user.git.ref)
        root = into / "repo" / user.git.path if user.git.path else into / "repo"
        for item in root.iterdir():
            if item.name != ".git":
                shutil.move(str(item), into / item.name)
        shutil.rmtree(into / "repo", ignore_errors=True)
        return user.dockerfile_path
    assert user.tarball is not None
    archive = into / ".context.tar"
    with urllib.request.urlopen(user.tarball.url, timeout=300) as response, open(archive, "wb") as out:
        shutil.copyfileobj(response, out)
    if user.tarball.sha256:
        actual = hashlib.sha256(archive.read_bytes()).hexdigest()
        if actual != user.tarball.sha256:
            raise ContextError(f"tarball sha256 is {actual}, spec.build.tarball.sha256 says {user.tarball.sha256}")
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return user.dockerfile_path


class LocalBuilder:
    name = "local"

    def __init__(self, kube: Kube, settings: OperatorSettings, on_done: Callable[[str, str], None] | None = None,
                 instance_id: str | None = None):
        self.kube = kube
        self.settings = settings
        self.on_done = on_done
        self.instance_id = instance_id or uuid.uuid4().hex
        self._executor = ThreadPoolExecutor(max_workers=settings.max_concurrent_builds,
                                            thread_name_prefix="envkiln-build")
        self._futures: dict[tuple[str, str, int], Future[AttemptResult]] = {}
        self._lock = threading.Lock()

    def start(self, build: dict[str, Any], attempt: int) -> str | None:
        key = (build["metadata"]["namespace"], build["metadata"]["name"], attempt)
        with self._lock:
            if key in self._futures:
                return None
            future = self._executor.submit(self._build, build, attempt)
            self._futures[key] = future
        if self.on_done is not None:
            future.add_done_callback(lambda _: self._notify(key[0], key[1]))
        return None

    def _notify(self, namespace: str, name: str) -> None:
        try:
            assert self.on_done is not None
            self.on_done(namespace, name)
        except Exception:  # the periodic sync picks it up; never kill the pool thread
            log.exception("after local build of %s/%s", namespace, name)

    def observe(self, build: dict[str, Any], attempt: int) -> AttemptResult:
        key = (build["metadata"]["namespace"], build["metadata"]["name"], attempt)
        with self._lock:
            future = self._futures.get(key)
        if future is None:
            return AttemptResult(AttemptState.MISSING)
        if not future.done():
            return AttemptResult(AttemptState.RUNNING)
        return future.result()

    def _build(self, build: dict[str, Any], attempt: int) -> AttemptResult:
        spec = EnvironmentBuildSpec.model_validate(build["spec"])
        namespace = build["metadata"]["namespace"]
        # The lock directory (a one-stage render's) is not in the context: the build cannot COPY it.
        with tempfile.TemporaryDirectory(prefix="envkiln-ctx-") as tmp, \
                tempfile.TemporaryDirectory(prefix="envkiln-lock-") as lock_tmp:
            context = Path(tmp)
            lock_dir = Path(lock_tmp) if lock_location(spec.plan.dockerfile) is LockLocation.LOCK_IMAGE else None
            try:
                dockerfile = materialise_context(spec, namespace, self.kube, context)
                result = build_and_push(context, spec.image, dockerfile=dockerfile, extra_tags=("latest",),
                                        insecure=self.settings.insecure_registry,
                                        timeout=self.settings.build_deadline_seconds,
                                        root=self.settings.local_storage_root, lock_dir=lock_dir)
            except BuildFailed as error:
                return AttemptResult(AttemptState.FAILED, reason="BuildFailed", log_tail=tail(error.log))
            except (ContextError, OSError, subprocess.SubprocessError) as error:
                return AttemptResult(AttemptState.FAILED, reason="ContextUnavailable", log_tail=str(error))
            except Exception as error:  # a bug must not leave the build RUNNING forever
                log.exception("local build %s", spec.image)
                return AttemptResult(AttemptState.FAILED, reason="BuilderError", log_tail=repr(error))
        return AttemptResult(AttemptState.SUCCEEDED, digest=result.digest)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
