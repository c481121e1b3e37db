"""The operator's request endpoint, as an agent asks it (``src/agent/ask.rs``): present the
pod's projected service-account token, get the pod's wrap, report the receipt. Transient
refusals and network errors are retried with backoff; the rest raise the endpoint's reason."""

from __future__ import annotations

import logging
import os
import ssl
import time
from typing import Callable, Mapping, Optional

from . import _http
from .backoff import retry_wait
from .errors import OperatorUnreachable, Refused, TokenFileUnreadable, UsageError
from .protocol import (
    DEFAULT_IDENTITY_TOKEN,
    RECEIPT_PATH,
    WRAP_PATH,
    Answer,
    Failed,
    Outcome,
    Receipt,
    Refusal,
    Wrap,
    read_answer,
    read_refusal,
)
from .secret import Secret, redact

log = logging.getLogger("cubbyhole_agent")

# Indirection for tests, which replace it to observe waits without waiting.
_sleep = time.sleep


class IdentityToken(Secret):
    """The pod's projected service-account token (audience ``cubbyhole``)."""

    __slots__ = ()


def endpoint_context(ca_pem: Optional[str] = None, ca_file: Optional[str] = None) -> ssl.SSLContext:
    """A TLS context trusting only the endpoint's CA (PEM text or file); the system's roots
    when neither is given. A CA that is set but empty or holds no certificate is an error."""
    if ca_pem is not None and ca_file is not None:
        raise UsageError("give the endpoint's CA as PEM text or as a file, not both")
    if ca_file is not None:
        try:
            with open(ca_file, encoding="utf-8") as f:
                ca_pem = f.read()
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the endpoint's CA {ca_file}: {_http.describe(e)}") from None
    if ca_pem is None:
        return ssl.create_default_context()
    if not ca_pem.strip():
        # Set but empty: a mistake, not a request to trust the public roots.
        raise UsageError("the endpoint's CA is set but empty (CUBBYHOLE_REQUEST_CA)")
    if "-----BEGIN CERTIFICATE-----" not in ca_pem:
        raise UsageError("the endpoint's CA holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return ssl.create_default_context(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as e:
        raise UsageError(f"the endpoint's CA is not valid PEM: {_http.describe(e)}") from None


class Endpoint:
    """A client of the operator's request endpoint at ``url`` (``https://`` only).

    ``ca_pem`` (PEM text) or ``ca_file``: the only CA trusted for it. ``identity_token_path``:
    the pod's projected service-account token, read afresh for every request (the kubelet
    rotates it). ``on_answer``: called with every :class:`Answer` received (its body may hold
    a wrapping token: never log it)."""

    def __init__(
        self,
        url: str,
        ca_pem: Optional[str] = None,
        ca_file: Optional[str] = None,
        identity_token_path: str = DEFAULT_IDENTITY_TOKEN,
        on_answer: Optional[Callable[[Answer], None]] = None,
        timeout: float = _http.TIMEOUT,
    ) -> None:
        try:
            self._base = _http.split_base(url, ("https",))
        except _http.NotSent as e:
            raise UsageError(f"--request: {e.detail}") from None
        scheme, host, port, prefix = self._base
        self.url = f"{scheme}://{host if ':' not in host else '[' + host + ']'}:{port}{prefix}"
        self._context = endpoint_context(ca_pem, ca_file)
        self.identity_token_path = identity_token_path
        self._on_answer = on_answer
        self._timeout = timeout

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: object) -> "Endpoint":
        """The endpoint the webhook told the pod about: ``CUBBYHOLE_REQUEST``,
        ``CUBBYHOLE_REQUEST_CA`` and ``CUBBYHOLE_IDENTITY_TOKEN``."""
        env = os.environ if environ is None else environ
        url = env.get("CUBBYHOLE_REQUEST")
        if not url:
            raise UsageError("CUBBYHOLE_REQUEST is not set: is the pod selected for request delivery?")
        return cls(
            url,
            ca_pem=env.get("CUBBYHOLE_REQUEST_CA"),
            identity_token_path=env.get("CUBBYHOLE_IDENTITY_TOKEN") or DEFAULT_IDENTITY_TOKEN,
            **kwargs,  # type: ignore[arg-type]
        )

    def __repr__(self) -> str:
        return f"Endpoint(url={self.url!r}, identity_token_path={self.identity_token_path!r})"

    def _identity(self) -> IdentityToken:
        path = self.identity_token_path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, ValueError) as e:
            raise TokenFileUnreadable(
                f"cannot read the identity token: {path}: {_http.describe(e)}"
            ) from None
        token = text.strip()
        if not token:
            raise TokenFileUnreadable(f"cannot read the identity token: {path} is empty")
        return IdentityToken(token)

    def _post(self, path: str, body: Optional[bytes], identity: IdentityToken) -> Answer:
        headers = {"Authorization": "Bearer " + identity.reveal(), "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            sent = _http.post(self._base, path, headers, body, self._context, self._timeout)
        except _http.NotSent:
            raise TokenFileUnreadable(
                f"the identity token in {self.identity_token_path} holds characters no HTTP header may carry"
            ) from None
        answer = Answer(path, sent.status, sent.headers, sent.body)
        log.debug("POST %s%s: HTTP %d", self.url, path, sent.status)
        if self._on_answer is not None:
            self._on_answer(answer)
        return answer

    def ask_once(self) -> Outcome:
        """One ask, no retry: a :class:`Wrap`, a :class:`Refusal` or :class:`Failed`."""
        identity = self._identity()
        try:
            answer = self._post(WRAP_PATH, None, identity)
        except _http.TransportError as e:
            return Failed(e.detail, retry=True)
        outcome = read_answer(answer)
        if isinstance(outcome, Refusal):
            outcome.message = redact(outcome.message, identity)
        return outcome

    def ask(self, retries: int = 5) -> Wrap:
        """The pod's wrap. Retries, ``retries`` times, the refusals the endpoint marks
        retriable, network errors and 5xx/429 answers without a refusal, waiting the larger of
        ``Retry-After`` and a jittered backoff (at most 30 s). Raises :class:`Refused` for any
        other refusal, :class:`OperatorUnreachable` when the retries run out."""
        retry = 0
        while True:
            outcome = self.ask_once()
            if isinstance(outcome, Wrap):
                return outcome
            if isinstance(outcome, Refusal):
                if not outcome.retriable:
                    raise Refused(outcome.reason, outcome.message, outcome.status)
                why = f"{outcome.message} ({outcome.reason})"
            else:
                if not outcome.retry:
                    raise OperatorUnreachable(outcome.what)
                why = outcome.what
            if retry >= retries:
                raise OperatorUnreachable(why)
            wait = retry_wait(retry, outcome.retry_after)
            log.info("%s; asking again in %.1fs (retry %d of %d)", why, wait, retry + 1, retries)
            _sleep(wait)
            retry += 1

    def report(self, receipt: Receipt, retries: int = 2) -> None:
        """Reports ``receipt`` (accepted: 204). Retries transient failures like :meth:`ask`;
        raises :class:`Refused` or :class:`OperatorUnreachable` otherwise."""
        retry = 0
        body = receipt.to_line().encode("utf-8")
        while True:
            identity = self._identity()
            try:
                answer = self._post(RECEIPT_PATH, body, identity)
            except _http.TransportError as e:
                why, transient, retry_after = e.detail, True, None
            else:
                if 200 <= answer.status < 300:
                    return
                retry_after = answer.retry_after()
                refusal = read_refusal(answer.json(), answer.status, retry_after)
                if refusal is not None:
                    message = redact(refusal.message, identity)
                    if not refusal.retriable:
                        raise Refused(refusal.reason, message, refusal.status)
                    why, transient = f"{message} ({refusal.reason})", True
                else:
                    why = f"HTTP {answer.status} without a cubbyhole answer"
                    transient = answer.status >= 500 or answer.status == 429
            if not transient or retry >= retries:
                raise OperatorUnreachable(why)
            wait = retry_wait(retry, retry_after)
            log.info(
                "reporting the receipt: %s; again in %.1fs (retry %d of %d)", why, wait, retry + 1, retries
            )
            _sleep(wait)
            retry += 1
