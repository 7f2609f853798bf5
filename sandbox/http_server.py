"""A small reference server for the HTTP source: serves one desired-state file.

    python -m sandbox.http_server --file state.yaml [--bind 127.0.0.1] [--port 8080]
        [--cert server.pem --key server.key [--client-ca ca.pem]] [--token-file token]
        [--wait-timeout 30]

* GET any path: the file, with `ETag: "<rev>"` and `X-Revision: <rev>` (rev = the first 16
  hex digits of the body's SHA-256) and a JSON or YAML content type (by file suffix).
* `If-None-Match` equal to the current ETag: 304.
* `?wait=<rev>`: long-poll; held until the file's revision differs from <rev> (200) or
  --wait-timeout seconds pass (304). The file is checked every 10 ms.
* --cert/--key: HTTPS; --client-ca: a client certificate signed by that CA is required.
* --token-file: `Authorization: Bearer <token>` is required (401 otherwise); the file is
  re-read at every request, so a token can be rotated in place.
* A missing or unreadable file: 503.

On start it prints `serving FILE on URL` (URL with the real port when --port 0) on stdout.
"""
from __future__ import annotations

import argparse
import hashlib
import http.server
import logging
import ssl
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)
CHECK_INTERVAL = 0.01


@dataclass(frozen=True)
class Document:
    body: Optional[bytes]          # None: the file is missing or unreadable
    revision: str
    content_type: str


class WatchedFile:
    """The served file, re-read when its stat changes; waiters are woken on news."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.changed = threading.Condition()
        self._stamp: Optional[tuple] = None
        self.current = self._read()
        threading.Thread(target=self._follow, name="http-server watcher", daemon=True).start()

    def _read(self) -> Document:
        ctype = "application/json" if self.path.suffix == ".json" else "application/yaml"
        try:
            body = self.path.read_bytes()
        except OSError as exc:
            log.warning("http-server %s: unreadable: %s", self.path, exc)
            return Document(None, "unavailable", ctype)
        return Document(body, hashlib.sha256(body).hexdigest()[:16], ctype)

    def _stat(self) -> Optional[tuple]:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _follow(self) -> None:
        while True:
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                doc = self._read()
                with self.changed:
                    if doc.revision != self.current.revision:
                        log.info("http-server %s: revision %s", self.path, doc.revision)
                    self.current = doc
                    self.changed.notify_all()
            threading.Event().wait(CHECK_INTERVAL)

    def wait_change(self, revision: str, timeout: float) -> Document:
        with self.changed:
            self.changed.wait_for(lambda: self.current.revision != revision, timeout)
            return self.current


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True      # headers and body go out at once (no 40 ms stalls)
    server: "DocumentServer"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorized():
            self._send(401, b"a bearer token is required\n", {"WWW-Authenticate": "Bearer"})
            return
        doc = self.server.file.current
        query = parse_qs(urlsplit(self.path).query)
        wait = query.get("wait", [None])[0]
        if wait is not None and wait == doc.revision:
            doc = self.server.file.wait_change(wait, self.server.wait_timeout)
        if doc.body is None:
            self._send(503, b"the document is unavailable\n")
            return
        etag = f'"{doc.revision}"'
        headers = {"ETag": etag, "X-Revision": doc.revision}
        if self.headers.get("If-None-Match") == etag:
            self._send(304, b"", headers)
            return
        self._send(200, doc.body, {**headers, "Content-Type": doc.content_type})

    def _authorized(self) -> bool:
        if self.server.token_file is None:
            return True
        try:
            token = self.server.token_file.read_text(encoding="utf-8").strip()
        except OSError:
            return False
        return bool(token) and self.headers.get("Authorization") == f"Bearer {token}"

    def _send(self, status: int, body: bytes, headers: Optional[dict] = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and status != 304:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        log.debug("http-server %s: " + format, self.client_address[0], *args)


class DocumentServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], file: WatchedFile, wait_timeout: float,
                 token_file: Optional[Path]) -> None:
        super().__init__(address, Handler)
        self.file, self.wait_timeout, self.token_file = file, wait_timeout, token_file


def tls_context(cert: str, key: Optional[str], client_ca: Optional[str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sandbox.http_server",
                                description="serve one desired-state file with ETag and long-poll")
    p.add_argument("--file", required=True)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--cert"), p.add_argument("--key"), p.add_argument("--client-ca")
    p.add_argument("--token-file")
    p.add_argument("--wait-timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = DocumentServer((args.bind, args.port), WatchedFile(Path(args.file)), args.wait_timeout,
                            Path(args.token_file) if args.token_file else None)
    scheme = "http"
    if args.cert:
        try:
            ctx = tls_context(args.cert, args.key, args.client_ca)
        except (OSError, ssl.SSLError) as exc:
            print(f"http-server: cannot load TLS files: {exc}", file=sys.stderr)
            return 2
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    host, port = server.server_address[:2]
    print(f"serving {args.file} on {scheme}://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
