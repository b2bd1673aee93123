"""Kopf's webhook server, with every answer closing its connection.

The API server keeps HTTP/1.1 connections to a webhook open between reviews. When a replica stops
(a rolling upgrade, a drain), the Service stops sending it new connections, but a review sent on a
connection the API server already held reaches the stopping process, and when that process closes
its connections the review fails with EOF: a labelled pod refused (failurePolicy Fail). This was
seen once in 725 reviews during a rolling upgrade and a drain under load (node/test_chart_operator).
With `Connection: close` on every answer, each review opens a connection of its own, which the
Service sends to a ready replica; a stopping replica finishes the reviews it has (aiohttp waits for
them) and is sent no more after its endpoint is gone (the chart's preStop delay). The cost is a TLS
handshake per review.
"""

from __future__ import annotations

from typing import Any

import aiohttp.web
import kopf


class ClosingWebhookServer(kopf.WebhookServer):
    """kopf.WebhookServer whose answers each close their connection (see the module's docstring)."""

    @staticmethod
    async def _serve(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        response = await kopf.WebhookServer._serve(fn, request)
        response.force_close()
        return response
