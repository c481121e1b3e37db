"""Holders of secret values that never show them: not in ``repr``, ``str``, ``format``,
f-strings, ``%``-formatting, logging, tracebacks or pickles. The value comes out only through
:meth:`Secret.reveal`, to be put in the one request or file that needs it."""

from __future__ import annotations

import hmac
from typing import Any, Optional, Sequence, Tuple

#: What every secret holder prints in place of its value.
MASK = "***"


class Secret:
    """A secret string. Immutable, unpicklable, and printed as ``Secret(***)``."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{type(self).__name__} holds a str")
        if not value:
            raise ValueError(f"{type(self).__name__} cannot be empty")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        """The secret itself: only for the request or file that needs it."""
        return self._value

    def _facts(self) -> Sequence[Tuple[str, Any]]:
        """What may be shown about the secret (never the secret)."""
        return ()

    def __repr__(self) -> str:
        shown = [f"{name}={value!r}" for name, value in self._facts()]
        return f"{type(self).__name__}({', '.join(shown + [MASK])})"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return format(repr(self), spec)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    # Secrets are not hashed (a hash is a little of the secret, kept in dicts and sets).
    __hash__ = None  # type: ignore[assignment]

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled: it holds a secret")

    def __reduce__(self) -> Any:
        raise TypeError(f"{type(self).__name__} cannot be pickled: it holds a secret")

    def __copy__(self) -> "Secret":
        return self

    def __deepcopy__(self, memo: Any) -> "Secret":
        return self


class WrappingToken(Secret):
    """A single-use response-wrapping token, with its accessor when known."""

    __slots__ = ("accessor",)
    accessor: Optional[str]

    def __init__(self, value: str, accessor: Optional[str] = None) -> None:
        super().__init__(value)
        object.__setattr__(self, "accessor", accessor)

    def _facts(self) -> Sequence[Tuple[str, Any]]:
        return () if self.accessor is None else (("accessor", self.accessor),)


class Token(Secret):
    """The agent's Vault token, unwrapped: its accessor, policies and TTL (seconds)."""

    __slots__ = ("accessor", "policies", "ttl")
    accessor: str
    policies: Tuple[str, ...]
    ttl: Optional[int]

    def __init__(
        self,
        value: str,
        accessor: str,
        policies: Sequence[str] = (),
        ttl: Optional[int] = None,
    ) -> None:
        super().__init__(value)
        object.__setattr__(self, "accessor", accessor)
        object.__setattr__(self, "policies", tuple(policies))
        object.__setattr__(self, "ttl", ttl)

    def _facts(self) -> Sequence[Tuple[str, Any]]:
        return (("accessor", self.accessor), ("policies", list(self.policies)), ("ttl", self.ttl))


def redact(text: str, *secrets: Optional[Secret]) -> str:
    """``text`` with every occurrence of each secret's value replaced by ``***``."""
    for s in secrets:
        if s is not None:
            text = text.replace(s.reveal(), MASK)
    return text
