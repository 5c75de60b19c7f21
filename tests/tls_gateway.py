"""A TLS gateway on loopback for the Client tests: a self-signed CA made with the openssl CLI, and a
small HTTPS reverse proxy in front of a real `vitrt serve` that asks for basic auth, an API key and
(optionally) a client certificate, as the ingress of deploy/kubernetes.yaml does. It records the
headers of every request it forwards, so a test sees what a client sent it."""

from __future__ import annotations

import base64
import http.client
import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "authorization", "x-api-key"}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for ``localhost`` only (not 127.0.0.1: the host name check is seen), a
    client certificate, and a second CA with its own ``localhost`` certificate. Returns their paths."""
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is missing; expected it on PATH (Debian's openssl package)")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other_ca"):
        _openssl("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                 "-subj", f"/CN=vitrt test {ca}", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)
    leaves = {"server": ("ca", "serverAuth", "DNS:localhost"), "client": ("ca", "clientAuth", None),
              "other_server": ("other_ca", "serverAuth", "DNS:localhost")}
    for name, (ca, usage, san) in leaves.items():
        ext = folder / f"{name}.ext"
        ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       f"extendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else ""))
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=vitrt test {name}",
                 cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", ext.name, cwd=folder)
    return {p.stem + ("_key" if p.suffix == ".key" else ""): p for p in folder.iterdir() if p.suffix in (".pem", ".key")}


class TLSGateway:
    """``with TLSGateway("127.0.0.1:8000", pki, basic_auth=(u, p), api_key=k) as gw:`` ... ``gw.port``."""

    def __init__(self, target: str, pki: dict[str, Path], *, basic_auth: tuple[str, str] | None = None,
                 api_key: str | None = None, client_cert: bool = False, server_cert: str = "server"):
        host, port = target.rsplit(":", 1)
        self.target, self.seen, self.refused = (host, int(port)), [], []
        want_auth = "Basic " + base64.b64encode(":".join(basic_auth).encode()).decode() if basic_auth else None
        gateway = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if want_auth and self.headers.get("Authorization") != want_auth:
                    gateway.refused.append(401)
                    return self._reply(401, b"unauthorized", [("WWW-Authenticate", 'Basic realm="vitrt"')])
                if api_key and self.headers.get("X-Api-Key") != api_key:
                    gateway.refused.append(403)
                    return self._reply(403, b"forbidden")
                gateway.seen.append({k.lower(): v for k, v in self.headers.items()})
                conn = http.client.HTTPConnection(*gateway.target, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None,
                                 headers={k: v for k, v in self.headers.items() if k.lower() not in HOP})
                    r = conn.getresponse()
                    data = r.read()
                    self._reply(r.status, data, [(k, v) for k, v in r.getheaders() if k.lower() not in HOP])
                finally:
                    conn.close()

            do_GET = do_POST = _forward

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki[server_cert], pki[f"{server_cert}_key"])
        if client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(pki["ca"])
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)  # a failed handshake: dropped
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> "TLSGateway":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
