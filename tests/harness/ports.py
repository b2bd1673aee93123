"""Free TCP ports on 127.0.0.1 and waiting for servers to answer."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], str | None] | None = None,
               interval: float = 0.2) -> None:
    """Poll `check` until true; fail early when `alive` reports the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None:
            died = alive()
            if died:
                raise RuntimeError(f"{what} exited before it was ready: {died}")
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def http_ok(url: str, context: ssl.SSLContext | None = None, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
