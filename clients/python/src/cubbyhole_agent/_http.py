"""The one HTTP call the client makes: a POST on a fresh connection, with a timeout on every
step, no redirects and no proxy. Its errors tell whether the request may have reached the
server (Vault's unwrap must never be retried then) and never carry a header value or a body."""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.parse
from typing import Dict, Mapping, Optional, Tuple

#: Seconds each connect, send and read may take.
TIMEOUT = 30.0
#: Largest answer read.
MAX_BODY = 1 << 20


class TransportError(Exception):
    """No HTTP answer; ``detail`` says why (never a header value or a body)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotSent(TransportError):
    """The request could not be built (bad URL, a header value no request may carry)."""


class Unreachable(TransportError):
    """The server never received the request (refused, DNS, TLS handshake, connect timeout)."""


class NoAnswer(TransportError):
    """The request may have reached the server but no answer arrived (timeout, reset)."""


class Response:
    """An HTTP answer: ``status``, ``headers`` (lower-case names) and the raw ``body``."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"Response(status={self.status}, body=<{len(self.body)} bytes>)"


def split_base(url: str, schemes: Tuple[str, ...]) -> Tuple[str, str, int, str]:
    """``(scheme, host, port, path prefix)`` of a base URL; :class:`NotSent` when it is none."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise NotSent(f"{url.strip()!r} is not a URL") from None
    if parts.scheme not in schemes:
        raise NotSent(f"{url.strip()!r} must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise NotSent(f"{url.strip()!r} names no host")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise NotSent(f"{parts.scheme}://{parts.hostname}: a base URL has no query, fragment or user")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname, port or default, parts.path.rstrip("/")


def _sendable(value: str) -> bool:
    """Whether ``value`` can be an HTTP header value as http.client sends it."""
    if any(c in value for c in "\r\n\0"):
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def describe(e: BaseException) -> str:
    """What went wrong, in words that never quote a request."""
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: certificate not trusted: {e.verify_message}"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or type(e).__name__}"
    if isinstance(e, socket.gaierror):
        return f"name resolution failed: {e.strerror}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    if isinstance(e, OSError):
        return e.strerror or type(e).__name__
    return type(e).__name__


def post(
    base: Tuple[str, str, int, str],
    path: str,
    headers: Mapping[str, str],
    body: Optional[bytes] = None,
    context: Optional[ssl.SSLContext] = None,
    timeout: float = TIMEOUT,
) -> Response:
    """POSTs ``body`` to ``path`` under ``base`` (from :func:`split_base`)."""
    scheme, host, port, prefix = base
    for value in headers.values():
        if not _sendable(value):
            raise NotSent("a header value no HTTP request may carry")
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"connection failed: {describe(e)}") from None
        try:
            conn.request("POST", prefix + path, body=body if body is not None else b"", headers=dict(headers))
            resp = conn.getresponse()
            data = resp.read(MAX_BODY + 1)
        except ssl.SSLError as e:
            raise NoAnswer(describe(e)) from None
        except ValueError:
            # http.client quotes the offending value: never pass its words on.
            raise NotSent("a header value no HTTP request may carry") from None
        except (OSError, http.client.HTTPException) as e:
            raise NoAnswer(describe(e)) from None
        if len(data) > MAX_BODY:
            raise NoAnswer(f"the answer is larger than {MAX_BODY} bytes")
        answer_headers: Dict[str, str] = {}
        for name, value in resp.getheaders():
            key = name.lower()
            answer_headers[key] = f"{answer_headers[key]}, {value}" if key in answer_headers else value
        return Response(resp.status, answer_headers, data)
    finally:
        conn.close()
