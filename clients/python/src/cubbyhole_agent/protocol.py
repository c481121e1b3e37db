"""The request endpoint's wire format (``src/request/protocol.rs``, ``src/agent/receipt.rs``,
``api/request-endpoint.openapi.yaml``): paths, reason words, receipt words, and the answers
as Python objects."""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Tuple, Union

from .secret import WrappingToken

#: Where the agent asks for its wrap (``POST``, no body).
WRAP_PATH = "/v1/wrap"
#: Where the agent reports its receipt (``POST``, the receipt's JSON line).
RECEIPT_PATH = "/v1/receipt"
#: The audience the pod's projected service-account token must be minted for.
AUDIENCE = "cubbyhole"
#: Where the webhook mounts the identity token.
DEFAULT_IDENTITY_TOKEN = "/var/run/cubbyhole/identity/token"

#: Reason word -> (HTTP status, retriable), in the order the API document lists them.
REASONS: Dict[str, Tuple[int, bool]] = {
    "NoToken": (401, False),
    "NotAuthenticated": (401, False),
    "NotBoundToPod": (403, False),
    "PodGone": (403, False),
    "NotSelected": (403, False),
    "Conflict": (403, False),
    "NotOnRequest": (403, False),
    "InvalidBinding": (403, False),
    "NameTaken": (409, False),
    "AlreadyServed": (409, False),
    "StaleReceipt": (409, False),
    "BadReceipt": (400, False),
    "RateLimited": (429, True),
    "Retry": (503, True),
    "VaultUnavailable": (503, True),
    "VaultRefused": (502, False),
    "Internal": (500, True),
}


def retriable(reason: str) -> bool:
    """True when asking again later may succeed without anyone changing anything."""
    return REASONS.get(reason, (0, False))[1]


# Receipt words (``src/agent/receipt.rs``): what the agent did with its wrap.
UNWRAPPED = "unwrapped"
INVALID_WRAPPING_TOKEN = "invalid-wrapping-token"
UNEXPECTED_CREATION_PATH = "unexpected-creation-path"
VAULT_UNREACHABLE = "vault-unreachable"
VAULT_ERROR = "vault-error"
TOKEN_FILE_UNREADABLE = "token-file-unreadable"
WRITE_FAILED = "write-failed"
REQUEST_REFUSED = "request-refused"
OPERATOR_UNREACHABLE = "operator-unreachable"

#: Every receipt word, in the order the API document lists them.
RESULTS = (
    UNWRAPPED,
    INVALID_WRAPPING_TOKEN,
    UNEXPECTED_CREATION_PATH,
    VAULT_UNREACHABLE,
    VAULT_ERROR,
    TOKEN_FILE_UNREADABLE,
    WRITE_FAILED,
    REQUEST_REFUSED,
    OPERATOR_UNREACHABLE,
)


class Receipt:
    """What the agent reports about one attempt: a result word, and the accessor of the token
    it unwrapped (only after a successful unwrap). Never a token."""

    __slots__ = ("result", "accessor")

    def __init__(self, result: str, accessor: Optional[str] = None) -> None:
        self.result = result
        self.accessor = accessor

    @classmethod
    def unwrapped(cls, accessor: str) -> "Receipt":
        """A successful unwrap of the token with ``accessor``."""
        return cls(UNWRAPPED, accessor)

    @classmethod
    def failed(cls, result: str) -> "Receipt":
        """A failed attempt."""
        return cls(result)

    def to_line(self) -> str:
        """The JSON line the endpoint (and a termination message) takes."""
        body: Dict[str, str] = {"result": self.result}
        if self.accessor is not None:
            body["accessor"] = self.accessor
        return json.dumps(body, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Receipt):
            return NotImplemented
        return (self.result, self.accessor) == (other.result, other.accessor)

    def __hash__(self) -> int:
        return hash((self.result, self.accessor))

    def __repr__(self) -> str:
        return f"Receipt(result={self.result!r}, accessor={self.accessor!r})"


class Answer:
    """One HTTP answer of the endpoint, as received: ``path`` asked, ``status``, ``headers``
    (lower-case names). The body may hold a wrapping token: it is only in :meth:`body`, never
    in ``repr``."""

    __slots__ = ("path", "status", "headers", "_body")

    def __init__(self, path: str, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.path = path
        self.status = status
        self.headers = dict(headers)
        self._body = body

    def body(self) -> bytes:
        """The raw body. May hold a wrapping token: never log it."""
        return self._body

    def json(self) -> Any:
        """The body parsed as JSON, or None when it is not JSON."""
        try:
            return json.loads(self._body.decode("utf-8"))
        except ValueError:
            return None

    def retry_after(self) -> Optional[float]:
        """``Retry-After`` in seconds, when the endpoint sent a whole number of them."""
        value = self.headers.get("retry-after", "").strip()
        return float(value) if value.isdigit() else None

    def __repr__(self) -> str:
        return f"Answer(path={self.path!r}, status={self.status}, body=<{len(self._body)} bytes>)"


class Wrap:
    """A successful ask: the wrapping token and what the endpoint says about it."""

    __slots__ = ("token", "wrap_accessor", "binding", "start", "wrap_ttl_seconds")

    def __init__(
        self,
        token: WrappingToken,
        wrap_accessor: str,
        binding: str,
        start: int,
        wrap_ttl_seconds: int,
    ) -> None:
        self.token = token
        self.wrap_accessor = wrap_accessor
        self.binding = binding
        self.start = start
        self.wrap_ttl_seconds = wrap_ttl_seconds

    def __repr__(self) -> str:
        return (
            f"Wrap(wrap_accessor={self.wrap_accessor!r}, binding={self.binding!r}, "
            f"start={self.start}, wrap_ttl_seconds={self.wrap_ttl_seconds}, token={self.token!r})"
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("Wrap cannot be pickled: it holds a secret")


class Refusal:
    """The endpoint refused: its ``reason`` word, ``message`` for people, HTTP ``status`` and
    ``Retry-After`` (seconds) when it sent one."""

    __slots__ = ("reason", "message", "status", "retry_after")

    def __init__(self, reason: str, message: str, status: int, retry_after: Optional[float] = None) -> None:
        self.reason = reason
        self.message = message
        self.status = status
        self.retry_after = retry_after

    @property
    def retriable(self) -> bool:
        """Whether the endpoint marks this reason as worth asking again."""
        return retriable(self.reason)

    def __repr__(self) -> str:
        return (
            f"Refusal(reason={self.reason!r}, status={self.status}, message={self.message!r}, "
            f"retry_after={self.retry_after!r})"
        )


class Failed:
    """No cubbyhole answer: a network error, or an HTTP answer without a refusal. ``retry``:
    worth asking again; ``retry_after`` when the endpoint said."""

    __slots__ = ("what", "retry", "retry_after")

    def __init__(self, what: str, retry: bool, retry_after: Optional[float] = None) -> None:
        self.what = what
        self.retry = retry
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"Failed(what={self.what!r}, retry={self.retry}, retry_after={self.retry_after!r})"


#: What one ask gives.
Outcome = Union[Wrap, Refusal, Failed]


def _count(value: Any) -> Optional[int]:
    """``value`` when it is a non-negative integer (not a bool), else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def read_wrap(body: Any) -> Optional[Wrap]:
    """A :class:`Wrap` from a parsed 200 body, or None when it carries no complete wrap."""
    if not isinstance(body, dict):
        return None
    token = body.get("wrappingToken")
    accessor = body.get("wrapAccessor")
    binding = body.get("binding")
    start = _count(body.get("start"))
    ttl = _count(body.get("wrapTtlSeconds"))
    if not (isinstance(token, str) and token and isinstance(accessor, str)):
        return None
    if not isinstance(binding, str) or start is None or ttl is None:
        return None
    return Wrap(WrappingToken(token, accessor), accessor, binding, start, ttl)


def read_refusal(body: Any, status: int, retry_after: Optional[float]) -> Optional[Refusal]:
    """A :class:`Refusal` from a parsed body, or None when it is not one."""
    if not isinstance(body, dict):
        return None
    reason, message = body.get("reason"), body.get("message")
    if not (isinstance(reason, str) and isinstance(message, str)):
        return None
    return Refusal(reason, message, status, retry_after)


def read_answer(answer: Answer) -> Outcome:
    """What one answer to an ask means, as ``cubbyhole unwrap`` reads it."""
    retry_after = answer.retry_after()
    body = answer.json()
    if answer.status == 200:
        wrap = read_wrap(body)
        if wrap is None:
            return Failed("the endpoint's answer carries no wrap", retry=False)
        return wrap
    refusal = read_refusal(body, answer.status, retry_after)
    if refusal is not None:
        return refusal
    return Failed(
        f"HTTP {answer.status} without a cubbyhole answer: is --request the operator's endpoint?",
        retry=answer.status >= 500 or answer.status == 429,
        retry_after=retry_after,
    )
