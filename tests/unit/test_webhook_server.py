"""The webhook server closes the connection after every answer (envkiln.runtime.webhookserver): a review
is never sent on a connection the API server held to a replica that has since begun to stop."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from typing import Any

import kopf

from envkiln.runtime.webhookserver import ClosingWebhookServer

REVIEW = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u1"}}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers_over_one_connection(server_class: type[kopf.WebhookServer]) -> list[tuple[int, str | None, bool]]:
    """Two reviews posted on one client connection: (status, Connection header, whether the second one got
    an answer on that same connection)."""
    port = free_port()

    async def review(request: Any, *, webhook: str | None = None, headers: dict[str, str] | None = None,
                     sslpeer: dict[str, Any] | None = None) -> Any:
        return {"apiVersion": request["apiVersion"], "kind": "AdmissionReview",
                "response": {"uid": request["request"]["uid"], "allowed": True}}

    def client() -> list[tuple[int, str | None, bool]]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        seen = []
        try:
            for _ in range(2):
                try:
                    connection.request("POST", "/envkiln-environment", body=json.dumps(REVIEW),
                                       headers={"Content-Type": "application/json"})
                    answer = connection.getresponse()
                    assert json.loads(answer.read())["response"]["uid"] == "u1"
                    seen.append((answer.status, answer.getheader("Connection"), connection.sock is not None))
                except (http.client.HTTPException, OSError) as error:
                    seen.append((0, repr(error), False))
        finally:
            connection.close()
        return seen

    async def main() -> list[tuple[int, str | None, bool]]:
        server = server_class(addr="127.0.0.1", port=port, insecure=True)
        serving: Any = server(review)  # an async generator: aclose() stops serving
        await serving.__anext__()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, client)
        finally:
            await serving.aclose()

    return asyncio.run(main())


def test_every_answer_closes_its_connection() -> None:
    answers = answers_over_one_connection(ClosingWebhookServer)
    # http.client opens a new connection for the second request when the server said close.
    assert [(status, header) for status, header, _ in answers] == [(200, "close"), (200, "close")]
    assert all(not kept for _, _, kept in answers), "the client holds no connection after an answer"


def test_kopfs_own_server_keeps_the_connection_open() -> None:
    """What the subclass changes: Kopf's server keeps the connection for the next review."""
    answers = answers_over_one_connection(kopf.WebhookServer)
    assert [status for status, _, _ in answers] == [200, 200]
    assert all(header != "close" and kept for _, header, kept in answers), answers
