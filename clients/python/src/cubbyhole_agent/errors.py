"""Why a bootstrap failed: one exception per kind, each with the exit code and receipt word of
``cubbyhole unwrap`` (its table is in ``src/agent/unwrap.rs``). Messages never hold a token."""

from __future__ import annotations

from typing import Dict, Optional

from . import protocol


class CubbyholeError(Exception):
    """Base of every failure: ``exit_code`` for the CLI, ``receipt`` the word to report (None:
    nothing reached Vault, nothing to report)."""

    exit_code: int = 1
    receipt: Optional[str] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(CubbyholeError):
    """Bad flags or configuration: URL, CA, Vault address, namespace, ``--expect-path``."""

    exit_code = 2


class InvalidWrap(CubbyholeError):
    """Vault says the wrap is not valid: consumed, expired or revoked."""

    exit_code = 3
    receipt = protocol.INVALID_WRAPPING_TOKEN

    def __init__(
        self, message: str = "the wrapping token is not valid (already used, expired or revoked)"
    ) -> None:
        super().__init__(message)


class UnexpectedCreationPath(CubbyholeError):
    """The wrap was created somewhere other than ``--expect-path``; it was NOT consumed."""

    exit_code = 4
    receipt = protocol.UNEXPECTED_CREATION_PATH

    def __init__(self, found: str, expected: str) -> None:
        super().__init__(f"the wrap was created at {found!r}, expected {expected}; not unwrapping it")
        self.found = found
        self.expected = expected


class VaultUnreachable(CubbyholeError):
    """Vault could not be reached after the retries, or an unwrap got no answer.
    ``maybe_processed``: the request may have reached Vault (an unwrap may have consumed it)."""

    exit_code = 5
    receipt = protocol.VAULT_UNREACHABLE

    def __init__(self, message: str, maybe_processed: bool = False) -> None:
        super().__init__(message)
        self.maybe_processed = maybe_processed


class VaultError(CubbyholeError):
    """Vault answered with another error (``status`` when it was an HTTP answer)."""

    exit_code = 6
    receipt = protocol.VAULT_ERROR

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status


class TokenFileUnreadable(CubbyholeError):
    """The identity token file is unreadable, empty, or holds what no HTTP header may carry."""

    exit_code = 7
    receipt = protocol.TOKEN_FILE_UNREADABLE


class WriteFailed(CubbyholeError):
    """The token cannot be written to ``out`` (checked before unwrapping too)."""

    exit_code = 8
    receipt = protocol.WRITE_FAILED


class Refused(CubbyholeError):
    """The operator's endpoint refused (after retrying the transient refusals): its ``reason``
    word, its ``message`` for people and the HTTP ``status``."""

    exit_code = 9
    receipt = protocol.REQUEST_REFUSED

    def __init__(self, reason: str, message: str, status: int) -> None:
        super().__init__(f"the operator refused to hand out a wrap: {message} (reason {reason})")
        self.reason = reason
        self.message = message
        self.status = status


class OperatorUnreachable(CubbyholeError):
    """The operator's endpoint could not be reached or answered nonsense, after the retries."""

    exit_code = 10
    receipt = protocol.OPERATOR_UNREACHABLE

    def __init__(self, what: str) -> None:
        super().__init__(f"the operator's endpoint is unreachable: {what}")
        self.what = what


#: Every failure kind, in exit-code order.
FAILURES = (
    UsageError,
    InvalidWrap,
    UnexpectedCreationPath,
    VaultUnreachable,
    VaultError,
    TokenFileUnreadable,
    WriteFailed,
    Refused,
    OperatorUnreachable,
)

#: Exit code -> receipt word (None: no receipt), as in ``cubbyhole unwrap``'s table.
EXIT_CODES: Dict[int, Optional[str]] = {0: protocol.UNWRAPPED}
EXIT_CODES.update({f.exit_code: f.receipt for f in FAILURES})

#: Failures that happen before the run holds a wrap: nothing to report to the endpoint.
BEFORE_WRAP = (UsageError, TokenFileUnreadable, Refused, OperatorUnreachable)
