"""Run `envkiln run` as a child process (tests, demo): a real operator process that can be killed."""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from harness.controlplane import REPO_ROOT, cache_dir
from harness.process import ManagedProcess
from harness.records import TEST_SIGNING_KEY


def _has_setting(source: Path, name: str) -> bool:
    """Whether the operator in `source` has the setting `name` (a field of OperatorSettings)."""
    settings = source / "envkiln" / "core" / "settings.py"
    return not settings.exists() or re.search(rf"^    {re.escape(name)}\s*:", settings.read_text(), re.M) is not None


class OperatorProcess:
    def __init__(self, kubeconfig: Path, settings: dict[str, str], namespaces: list[str] | None = None,
                 log_dir: Path | None = None, standalone: bool = True, name: str = "operator",
                 source: Path | None = None):
        """`source`: the directory holding the `envkiln` package to run (default: this checkout's
        `operator/`), e.g. `operator/` of a `git worktree` of another revision, for side-by-side benches."""
        self.kubeconfig = kubeconfig
        self.source = source or REPO_ROOT / "operator"
        self.settings = settings
        self.namespaces = namespaces or []
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="envkiln-operator-"))
        self.standalone = standalone
        self.name = name
        self.process: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        self.starts += 1
        argv = [sys.executable, "-m", "envkiln.cli", "run"]
        if self.standalone:
            argv.append("--standalone")
        for namespace in self.namespaces:
            argv += ["--namespace", namespace]
        env = {
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONPATH": str(self.source) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
            **{k: v for k, v in os.environ.items() if k.startswith("ENVKILN_") and k not in self.settings},
            **self.settings,
        }
        env.setdefault("ENVKILN_LOCAL_STORAGE_ROOT", str(cache_dir() / "buildah"))
        env.setdefault("ENVKILN_SIGNING_KEY", TEST_SIGNING_KEY)  # so harness.records can seed earlier builds
        if not env["ENVKILN_SIGNING_KEY"]:  # "": the keys of the Secret envkiln-signing-key instead
            del env["ENVKILN_SIGNING_KEY"]
        # Builds install with pip unless a test gives a uv tool image it pushed (ghcr.io is not reachable here).
        # Not for an older source (a bench's other revision) that has no such setting: it would refuse to start.
        if _has_setting(self.source, "uv_image"):
            env.setdefault("ENVKILN_UV_IMAGE", "")
        env.setdefault("ENVKILN_METRICS_PORT", "0")  # off unless a test asks: several operators run at once
        # Test git servers and registries listen on 127.0.0.1, which namespaces may not name by default.
        env.setdefault("ENVKILN_ALLOWED_PRIVATE_HOSTS", "127.0.0.0/8,::1")
        # Base images are resolved to digests only in the test registry: nothing is asked of docker.io.
        env.setdefault("ENVKILN_BASE_IMAGE_REGISTRIES", env.get("ENVKILN_REGISTRY", "localhost:5000").split("/")[0])
        if self.namespaces:
            env.setdefault("ENVKILN_NAMESPACES", ",".join(self.namespaces))
        self.process = ManagedProcess(self.name, argv, self.log_dir / f"{self.name}.log", env=env).start()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=20)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace") if self.process else ""

    def exited(self) -> str | None:
        return self.process.exited() if self.process else None

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
