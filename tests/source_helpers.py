"""Real servers for the source tests: the reference HTTP server and etcd, each a process
on 127.0.0.1 (or inside a namespace) that is stopped also when the test fails, plus a
throwaway CA with a server and a client certificate."""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import httpx

ROOT = Path(__file__).resolve().parent.parent
ETCD = shutil.which("etcd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stop_process(proc: Optional[subprocess.Popen], sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- certificates ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path          # a CA that signed nothing here


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography.hazmat.primitives import serialization
    ca_key, ca_cert = _cert("test CA", None, None, ca=True)
    other_key, other_cert = _cert("unrelated CA", None, None, ca=True)
    srv_key, srv_cert = _cert("127.0.0.1", ca_key, ca_cert, san=True)
    cli_key, cli_cert = _cert("agent hv-01", ca_key, ca_cert)
    pem = serialization.Encoding.PEM
    paths = {}
    for name, obj in (("ca.pem", ca_cert), ("other-ca.pem", other_cert), ("server.pem", srv_cert),
                      ("client.pem", cli_cert)):
        paths[name] = directory / name
        paths[name].write_bytes(obj.public_bytes(pem))
    for name, key in (("server.key", srv_key), ("client.key", cli_key)):
        paths[name] = directory / name
        paths[name].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return Pki(paths["ca.pem"], paths["server.pem"], paths["server.key"], paths["client.pem"],
               paths["client.key"], paths["other-ca.pem"])


def _cert(cn: str, issuer_key, issuer_cert, ca: bool = False, san: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer_cert.subject if issuer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return key, builder.sign(issuer_key or key, hashes.SHA256())


# -- the reference HTTP server -----------------------------------------------------------------
@dataclass
class HttpServer:
    """`python -m sandbox.http_server` serving `file`; start() again after stop()
    reuses the same port."""
    file: Path
    extra: Sequence[str] = ()
    port: int = 0
    proc: Optional[subprocess.Popen] = None
    url: str = ""

    def start(self) -> "HttpServer":
        self.port = self.port or free_port()
        cmd = [sys.executable, "-m", "sandbox.http_server", "--file", str(self.file),
               "--port", str(self.port), *self.extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("serving"):
            stop_process(self.proc)
            raise RuntimeError(f"http_server did not start: {line!r}")
        self.url = line.split(" on ", 1)[1].strip()
        return self

    def stop(self) -> None:
        stop_process(self.proc)


# -- etcd ------------------------------------------------------------------------------------------
@dataclass
class Etcd:
    """One etcd member in a temporary data dir, on random loopback ports (or `host` inside
    a network namespace when `netns` is given). start() after stop() keeps data and ports."""
    host: str = "127.0.0.1"
    netns: Optional[str] = None
    args: Sequence[str] = ()
    pki: Optional[Pki] = None       # client TLS with a required client certificate
    client_port: int = 0
    peer_port: int = 0
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="sga-etcd-")))
    proc: Optional[subprocess.Popen] = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.pki else 'http'}://{self.endpoint}"

    def start(self, timeout: float = 20) -> "Etcd":
        self.client_port = self.client_port or free_port()
        self.peer_port = self.peer_port or free_port()
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = ["etcd", "--name", "default", "--data-dir", str(self.data_dir / "data"),
               "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
               "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"default={peer}", "--log-level", "warn", *self._tls(), *self.args]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        log = open(self.data_dir / "etcd.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        log.close()
        healthy = False
        try:
            healthy = wait_for(self._healthy, timeout, 0.05)
        finally:
            if not healthy:
                self.stop()
        if not healthy:
            raise RuntimeError(f"etcd did not start: {(self.data_dir / 'etcd.log').read_text()[-2000:]}")
        return self

    def _tls(self) -> list[str]:
        if self.pki is None:
            return []
        return ["--cert-file", str(self.pki.server_cert), "--key-file", str(self.pki.server_key),
                "--trusted-ca-file", str(self.pki.ca), "--client-cert-auth"]

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, "etcdctl", "--endpoints", self.url,
                   "endpoint", "health"]
            return subprocess.run(cmd, capture_output=True, timeout=10,
                                  env={**os.environ, "ETCDCTL_API": "3"}).returncode == 0
        try:
            return httpx.get(f"{self.url}/health", timeout=1, verify=self._verify()).status_code == 200
        except httpx.HTTPError:
            return False

    def _verify(self) -> ssl.SSLContext | bool:
        if self.pki is None:
            return True
        ctx = ssl.create_default_context(cafile=str(self.pki.ca))
        ctx.load_cert_chain(self.pki.client_cert, self.pki.client_key)
        return ctx

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


class Recorder:
    """An on_change callback that counts calls and wakes waiters."""

    def __init__(self) -> None:
        self.calls = 0
        self.times: list[float] = []
        self._cond = threading.Condition()

    def __call__(self) -> None:
        with self._cond:
            self.calls += 1
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.calls >= count, timeout)
