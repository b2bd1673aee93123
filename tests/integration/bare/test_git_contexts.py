"""Git build contexts against a real git server (`git daemon` on 127.0.0.1) and a real operator:
the ref is resolved to a commit before hashing, recorded in status.resolvedCommit and given to the
build; a new commit on the branch gives a new hash and a new build; an unreachable repository keeps
the last commit (and says so), and a ref that never resolved waits with a clear condition."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from harness.gitserver import GitServer
from operator_helpers import Envs, condition, environment, wait_for

DOCKERFILE = "FROM scratch\nCOPY app.txt /app.txt\n"


def git_env(name: str, url: str, ref: str = "main") -> dict[str, Any]:
    return environment(name, build={"git": {"url": url, "ref": ref}})


def test_a_branch_is_resolved_and_a_new_commit_gives_a_new_build(api_client: client.ApiClient, namespace: str,
                                                                 start_operator: Any, tmp_path: Any) -> None:
    with GitServer(tmp_path / "git") as server:
        url = server.create_repo("app")
        first = server.commit("app", {"Dockerfile": DOCKERFILE, "app.txt": "one\n"})
        operator = start_operator(namespace, git_ref_ttl_seconds="1")
        envs = Envs(api_client, namespace)
        envs.create(git_env("app", url))
        envs.create(git_env("pinned", url, ref=first))

        def building(name: str, commit: str) -> dict[str, Any] | None:
            status = envs.status(name)
            return status if status.get("resolvedCommit") == commit and status.get("phase") == "Building" else None

        one = wait_for(lambda: building("app", first), what="the branch resolved to the first commit",
                       diagnostics=operator.log)
        assert condition(one, "GitRefResolved")["status"] == "True"
        build = envs.build(one["build"])
        assert build["spec"]["plan"]["context"]["git"]["ref"] == first, "the build fetches the commit, not the branch"
        pinned = wait_for(lambda: building("pinned", first), what="the pinned commit used as is")
        assert pinned["hash"] == one["hash"], "a branch at commit C and the commit C are the same definition"

        second = server.commit("app", {"Dockerfile": DOCKERFILE, "app.txt": "two\n"})
        two = wait_for(lambda: building("app", second), timeout=60, what="the new commit picked up",
                       diagnostics=operator.log)
        assert two["hash"] != one["hash"] and two["build"] != one["build"]
        assert envs.build(two["build"])["spec"]["plan"]["context"]["git"]["ref"] == second
        assert envs.status("pinned")["hash"] == one["hash"], "a pinned commit never moves"

        server.stop()  # the repository becomes unreachable: the last commit is kept, and said so

        def unreachable() -> dict[str, Any] | None:
            status = envs.status("app")
            found = [c for c in status.get("conditions") or [] if c["type"] == "GitRefResolved"]
            return status if found and found[0]["status"] == "False" else None

        kept = wait_for(unreachable, timeout=60, what="GitRefResolved False", diagnostics=operator.log)
        assert kept["resolvedCommit"] == second and kept["hash"] == two["hash"] and kept["phase"] == "Building"
        assert condition(kept, "GitRefResolved")["reason"] == "GitUnreachable"
        assert f"keeping commit {second}" in condition(kept, "GitRefResolved")["message"]

        envs.create(git_env("never", url))  # never resolved: waits, says why, builds nothing
        never = envs.wait_phase("never", "Pending", timeout=60, diagnostics=operator.log)
        assert condition(never, "Ready")["reason"] == "GitUnreachable" and "spec.build.git" in never["message"]
        assert "hash" not in never and "resolvedCommit" not in never
