"""Local fakes for the unit tests: an HTTPS request endpoint answering from a script, and a
plain-HTTP Vault that mints, looks up and unwraps wraps in memory."""

from __future__ import annotations

import json
import secrets
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple



def _make_tls() -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed, made with ``openssl``
    in a temporary directory when the tests start (no key is ever checked in)."""
    import atexit
    import shutil
    import subprocess
    import tempfile

    if shutil.which("openssl") is None:
        raise RuntimeError("the unit tests' fake HTTPS endpoint needs the openssl command")
    d = Path(tempfile.mkdtemp(prefix="cubbyhole-agent-tls-"))
    atexit.register(shutil.rmtree, d, True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=cubbyhole-agent test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return d


FIXTURES = _make_tls()
CA_FILE = str(FIXTURES / "ca.pem")

Reply = Tuple[int, Dict[str, str], bytes]


class Request:
    """One request a fake received."""

    def __init__(self, method: str, path: str, headers: Dict[str, str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body.decode())


def reply(status: int, body: Any = None, headers: Optional[Dict[str, str]] = None) -> Reply:
    """An answer: ``body`` a dict/list (sent as JSON), bytes, or None (empty)."""
    h = dict(headers or {})
    if body is None:
        data = b""
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    return status, h, data


class FakeServer:
    """An HTTP(S) server on 127.0.0.1 answering every POST with ``respond(request)``."""

    def __init__(self, respond: Callable[[Request], Reply], tls: bool) -> None:
        self.respond = respond
        self.requests: List[Request] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                fake.requests.append(req)
                status, headers, data = fake.respond(req)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(FIXTURES / "server.pem"), str(FIXTURES / "server.key"))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def paths(self) -> List[str]:
        return [r.path for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Script:
    """Answers per path from a list, the last answer repeated once the list runs out."""

    def __init__(self, **by_path: List[Reply]) -> None:
        self.by_path = {"/v1/" + k: list(v) for k, v in by_path.items()}

    def __call__(self, req: Request) -> Reply:
        replies = self.by_path.get(req.path)
        if not replies:
            return reply(404, b"not found")
        return replies.pop(0) if len(replies) > 1 else replies[0]


def wrap_body(token: str, accessor: str = "wrap-accessor", **over: Any) -> Dict[str, Any]:
    """A 200 body of ``/v1/wrap``."""
    body = {
        "wrappingToken": token,
        "wrapAccessor": accessor,
        "binding": "agents",
        "start": 0,
        "wrapTtlSeconds": 60,
    }
    body.update(over)
    return body


def refusal(reason: str, message: str = "no") -> Dict[str, str]:
    return {"reason": reason, "message": message}


class FakeVault:
    """``sys/wrapping/lookup`` and ``sys/wrapping/unwrap`` over wraps held in memory. Error
    bodies echo the token sent, as a careless server might: the client must blank it out."""

    INVALID = "wrapping token is not valid or does not exist"

    def __init__(self) -> None:
        self.wraps: Dict[str, Dict[str, Any]] = {}
        self.unwraps = 0
        self.fail_next: List[Reply] = []

    def mint(self, creation_path: str = "auth/token/create/agents") -> Tuple[str, str, str]:
        """A new wrap: (wrapping token, inner token, inner accessor)."""
        wrapping = "hvs.wrap-" + secrets.token_hex(12)
        inner = "hvs.inner-" + secrets.token_hex(12)
        accessor = "acc-" + secrets.token_hex(6)
        self.wraps[wrapping] = {
            "creation_path": creation_path,
            "auth": {
                "client_token": inner,
                "accessor": accessor,
                "policies": ["default", "agents"],
                "lease_duration": 600,
            },
        }
        return wrapping, inner, accessor

    def __call__(self, req: Request) -> Reply:
        if self.fail_next:
            return self.fail_next.pop(0)
        if req.path == "/v1/sys/wrapping/lookup":
            token = req.json().get("token", "")
            wrap = self.wraps.get(token)
            if wrap is None:
                return reply(400, {"errors": [self.INVALID + f" (token {token})"]})
            return reply(
                200,
                {
                    "data": {
                        "creation_path": wrap["creation_path"],
                        "creation_time": "2026-01-01T00:00:00Z",
                        "creation_ttl": 60,
                    }
                },
            )
        if req.path == "/v1/sys/wrapping/unwrap":
            self.unwraps += 1
            token = req.headers.get("x-vault-token", "")
            wrap = self.wraps.pop(token, None)
            if wrap is None:
                return reply(400, {"errors": [self.INVALID]})
            return reply(200, {"auth": wrap["auth"], "data": None})
        return reply(404, {"errors": []})
