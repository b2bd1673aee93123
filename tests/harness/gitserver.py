"""A real git server (`git daemon`, git:// protocol) on 127.0.0.1 serving bare repositories from a
directory, plus helpers to commit and tag in them (through a scratch clone and a push, as a user would)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from harness.ports import free_port, wait_until
from harness.process import ManagedProcess

GIT_USER = ["-c", "user.name=envkiln tests", "-c", "user.email=tests@envkiln.invalid"]
# No system or user configuration, no prompts: the same git on every machine.
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_TERMINAL_PROMPT": "0"}


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class GitServer:
    """Start with `with GitServer(tmp_path / "git") as server:`; `stop()`/`start()` simulate an outage
    (the repositories stay). `create_repo(name)` gives its git:// URL."""

    def __init__(self, workdir: Path | None = None, port: int | None = None):
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="envkiln-git-"))
        self.repos = self.workdir / "repos"
        self.port = port or free_port()
        self.process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"git://{self.host}/{name}.git"

    def git(self, *args: str, cwd: Path | None = None) -> str:
        """Run git; its output (stripped). Fails with git's own message."""
        result = subprocess.run(["git", *GIT_USER, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                                env={**os.environ, **GIT_ENV})
        if result.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout.strip()

    def start(self) -> GitServer:
        if shutil.which("git") is None:
            raise RuntimeError("git not found; install Debian's git package (scripts/bootstrap.sh)")
        self.repos.mkdir(parents=True, exist_ok=True)
        self.process = ManagedProcess("git-daemon", [
            "git", "daemon", "--reuseaddr", f"--base-path={self.repos}", "--export-all",
            "--listen=127.0.0.1", f"--port={self.port}", "--enable=receive-pack", "--informative-errors",
            str(self.repos),
        ], self.workdir / "git-daemon.log", env=GIT_ENV).start()
        wait_until(lambda: _accepts(self.port), 30, "git daemon", self.process.exited, interval=0.05)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def close(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _bare(self, name: str) -> Path:
        return self.repos / f"{name}.git"

    def create_repo(self, name: str, branch: str = "main") -> str:
        """An empty bare repository whose HEAD is `branch`; its git:// URL."""
        self.git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(self._bare(name)))
        return self.url(name)

    def commit(self, name: str, files: dict[str, str], branch: str = "main",
               message: str = "envkiln test commit") -> str:
        """Write `files` (path -> text; others stay) on `branch` (created when new) and push it; the
        new commit's id. Pushed over the file system, so it works while the daemon is stopped too."""
        with tempfile.TemporaryDirectory(prefix="clone-", dir=self.workdir) as scratch:
            clone = Path(scratch)
            self.git("init", "--quiet", f"--initial-branch={branch}", str(clone))
            self.git("remote", "add", "origin", str(self._bare(name)), cwd=clone)
            if self.git("ls-remote", "--heads", "origin", branch, cwd=clone):
                self.git("fetch", "--quiet", "origin", branch, cwd=clone)
                self.git("reset", "--quiet", "--hard", "FETCH_HEAD", cwd=clone)
            for path, content in files.items():
                target = clone / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
            self.git("add", "--all", cwd=clone)
            self.git("commit", "--quiet", "--allow-empty", "-m", message, cwd=clone)
            self.git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}", cwd=clone)
            return self.git("rev-parse", "HEAD", cwd=clone)

    def tag(self, name: str, tag: str, sha: str, annotated: bool = False) -> str:
        """Tag commit `sha`; the tag object's id for an annotated tag, else the commit's."""
        bare = self._bare(name)
        if annotated:
            self.git("tag", "--annotate", "-m", f"tag {tag}", tag, sha, cwd=bare)
        else:
            self.git("tag", tag, sha, cwd=bare)
        return self.git("rev-parse", f"refs/tags/{tag}", cwd=bare)

    def __enter__(self) -> GitServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

