"""A tiny PEP 503 "simple" package index with wheels made on the fly, for tests without network.

    wheel = make_wheel("envkiln-probe", "1.2.3", module="envkiln_probe", source='VERSION = "1.2.3"\\n')
    with PackageIndex([wheel]) as index:   # 127.0.0.1, a free port; or PackageIndex(host=..., port=...)
        pip install --index-url {index.url} envkiln-probe==1.2.3
        assert index.requested("envkiln-probe")

Existing wheels (e.g. downloaded once from PyPI into the harness cache) are served from disk,
without reading them into memory: `PackageIndex(directory=path)` or `index.add_directory(path)`.

Unknown projects answer 404, so pip and uv fail fast instead of retrying. Every request path is
recorded (`index.requests`), to prove that a build used this index, with the client's User-Agent
(`index.agents`: pip and uv name themselves there, so a test can tell which of them asked).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import re
import socket
import threading
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["PackageIndex", "Wheel", "WheelFile", "make_wheel", "normalize"]

_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed, so the same inputs make the same bytes


def normalize(name: str) -> str:
    """PEP 503 project-name normalization."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    data: bytes

    @property
    def project(self) -> str:
        return normalize(self.name)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def write(self, directory: Path) -> Path:
        path = Path(directory) / self.filename
        path.write_bytes(self.data)
        return path


@dataclass(frozen=True)
class WheelFile:
    """A wheel already on disk, served from there."""

    path: Path
    sha256: str

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def project(self) -> str:
        return normalize(self.path.name.split("-", 1)[0])

    @classmethod
    def of(cls, path: Path) -> WheelFile:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return cls(Path(path), digest.hexdigest())


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(name: str, version: str, module: str | None = None, source: str = "",
               files: dict[str, str | bytes] | None = None, requires: Iterable[str] = (),
               requires_python: str | None = None, summary: str = "A test package made by envkiln's harness") -> Wheel:
    """A pure-Python py3-none-any wheel, written by hand (no build backend, no network).

    `module` becomes `<module>.py` with `source`; `files` adds more paths (e.g. "pkg/__init__.py").
    """
    escaped = re.sub(r"[-_.]+", "_", name).lower()
    dist_info = f"{escaped}-{version}.dist-info"
    contents: dict[str, bytes] = {}
    if module is not None:
        contents[f"{module}.py"] = source.encode()
    for path, text in (files or {}).items():
        contents[path] = text.encode() if isinstance(text, str) else text
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: {summary}"]
    if requires_python:
        metadata.append(f"Requires-Python: {requires_python}")
    metadata += [f"Requires-Dist: {requirement}" for requirement in requires]
    contents[f"{dist_info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    contents[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: envkiln-harness\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record_path = f"{dist_info}/RECORD"
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in contents.items())
    contents[record_path] = (record + f"{record_path},,\n").encode()

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in contents.items():
            info = zipfile.ZipInfo(path, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return Wheel(name, version, f"{escaped}-{version}-py3-none-any.whl", buffer.getvalue())


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class PackageIndex:
    """A PEP 503 index in a thread: `/simple/`, `/simple/<project>/`, `/files/<wheel>`."""

    def __init__(self, wheels: Iterable[Wheel] = (), host: str = "127.0.0.1", port: int = 0,
                 directory: Path | None = None, link_bytes_per_second: float | None = None):
        """`link_bytes_per_second`: the wheels' bytes leave at most this fast, all downloads together (one
        shared link, as from a real index over a real network link); None: as fast as the machine."""
        self.host = host
        self.link = _Link(link_bytes_per_second) if link_bytes_per_second else None
        self.port = port
        self._wheels: dict[str, dict[str, Wheel | WheelFile]] = {}
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []  # (path, User-Agent)
        self._sent: list[tuple[str, str, int]] = []  # (path, User-Agent, body bytes) of every GET answered
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for wheel in wheels:
            self.add(wheel)
        if directory is not None:
            self.add_directory(directory)

    def add(self, wheel: Wheel | WheelFile) -> Wheel | WheelFile:
        with self._lock:
            self._wheels.setdefault(wheel.project, {})[wheel.filename] = wheel
        return wheel

    def add_directory(self, directory: Path) -> list[WheelFile]:
        """Serve every `*.whl` in `directory` from disk (hashed once here, for the links' #sha256=)."""
        files = [WheelFile.of(path) for path in sorted(Path(directory).glob("*.whl"))]
        for file in files:
            self.add(file)
        return files

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The --index-url."""
        return f"{self.base_url}/simple"

    @property
    def requests(self) -> list[str]:
        with self._lock:
            return [path for path, _ in self._requests]

    @property
    def agents(self) -> list[tuple[str, str]]:
        """(path, User-Agent) of every request, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def transfers(self) -> list[tuple[str, str, int]]:
        """(path, User-Agent, bytes of body sent) of every GET answered, in order."""
        with self._lock:
            return list(self._sent)

    def requested(self, project: str, files: bool = False) -> bool:
        """Whether the project's page (or, with files=True, one of its wheels) was requested."""
        project = normalize(project)
        with self._lock:
            names = set(self._wheels.get(project, {}))
            paths = [path for path, _ in self._requests]
        if files:
            return any(path.startswith("/files/") and path.removeprefix("/files/") in names for path in paths)
        return any(path.rstrip("/") == f"/simple/{project}" for path in paths)

    def start(self) -> PackageIndex:
        index = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def _answer(self, body: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                agent = self.headers.get("User-Agent", "")
                with index._lock:
                    index._requests.append((path, agent))
                status, content_type, data = index._route(path)
                size = data.stat().st_size if isinstance(data, Path) else len(data)
                start, length = 0, size
                wanted = _byte_range(self.headers.get("Range", ""), size) if status == 200 else None
                if wanted is not None:  # uv reads a wheel's metadata with range requests, as PyPI answers them
                    start, length = wanted
                    status = 206
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(length))
                self.send_header("Cache-Control", "no-store")
                if path.startswith("/files/") and status in (200, 206):
                    self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{start + length - 1}/{size}")
                self.end_headers()
                if not body:
                    return
                if isinstance(data, Path):
                    with open(data, "rb") as handle:
                        handle.seek(start)
                        _copy(handle, self.wfile, length, index.link)
                else:
                    self.wfile.write(data[start:start + length])
                with index._lock:
                    index._sent.append((path, agent, length))

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = (_Server6 if ":" in self.host else ThreadingHTTPServer)((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="envkiln-pypi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _route(self, path: str) -> tuple[int, str, bytes | Path]:
        with self._lock:
            wheels = {project: dict(files) for project, files in self._wheels.items()}
        parts = [part for part in path.split("/") if part]
        if parts == ["simple"]:
            links = "".join(f'<a href="{html.escape(p)}/">{html.escape(p)}</a>\n' for p in sorted(wheels))
            return 200, "text/html; charset=utf-8", _page("Simple index", links)
        if len(parts) == 2 and parts[0] == "simple":
            files = wheels.get(normalize(parts[1]))
            if not files:
                return 404, "text/plain; charset=utf-8", b"no such project\n"
            links = "".join(
                f'<a href="../../files/{html.escape(name)}#sha256={wheel.sha256}">{html.escape(name)}</a>\n'
                for name, wheel in sorted(files.items())
            )
            return 200, "text/html; charset=utf-8", _page(f"Links for {parts[1]}", links)
        if len(parts) == 2 and parts[0] == "files":
            for files in wheels.values():
                if parts[1] in files:
                    found = files[parts[1]]
                    return 200, "application/octet-stream", found.path if isinstance(found, WheelFile) else found.data
        return 404, "text/plain; charset=utf-8", b"not found\n"

    def __enter__(self) -> PackageIndex:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, length) of a single `Range: bytes=...` within `size`, else None (then the whole body)."""
    found = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not found or not size or (not found.group(1) and not found.group(2)):
        return None
    if not found.group(1):  # the last N bytes
        length = min(int(found.group(2)), size)
        return size - length, length
    start = int(found.group(1))
    end = min(int(found.group(2)), size - 1) if found.group(2) else size - 1
    if start > end:
        return None
    return start, end - start + 1


class _Link:
    """A link of a given speed shared by every download: each block takes its turn on one timeline."""

    def __init__(self, bytes_per_second: float):
        self.rate = bytes_per_second
        self._lock = threading.Lock()
        self._free_at = 0.0

    def send(self, size: int) -> None:
        """Wait until `size` bytes would have crossed the link after everything sent before them."""
        with self._lock:
            start = max(time.monotonic(), self._free_at)
            self._free_at = start + size / self.rate
            done = self._free_at
        time.sleep(max(0.0, done - time.monotonic()))


def _copy(source: io.BufferedReader, target: io.BufferedIOBase, length: int, link: _Link | None = None) -> None:
    while length > 0:
        block = source.read(min(length, 1 << 16 if link else 1 << 20))
        if not block:
            return
        if link is not None:
            link.send(len(block))
        target.write(block)
        length -= len(block)


def _page(title: str, links: str) -> bytes:
    return (f"<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
            f"<title>{html.escape(title)}</title></head>\n<body>\n{links}</body></html>\n").encode()
