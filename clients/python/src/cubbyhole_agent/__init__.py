"""A standard-library-only client for agents that bootstrap themselves with cubbyhole's
request delivery: ask the operator's endpoint for the pod's Vault wrap, check where Vault
created it before consuming it, unwrap it, store the token, report the receipt.

Tokens live only in :class:`Token` and :class:`WrappingToken`, which never print their value.
"""

from .endpoint import Endpoint, endpoint_context
from .errors import (
    EXIT_CODES,
    CubbyholeError,
    InvalidWrap,
    OperatorUnreachable,
    Refused,
    TokenFileUnreadable,
    UnexpectedCreationPath,
    UsageError,
    VaultError,
    VaultUnreachable,
    WriteFailed,
)
from .flow import bootstrap, check_path, expected_path, redeem
from .protocol import REASONS, RESULTS, Answer, Failed, Receipt, Refusal, Wrap
from .secret import Secret, Token, WrappingToken
from .tokenfile import write_token
from .vault import Vault, WrapLookup

__version__ = "0.1.0"

__all__ = [
    "EXIT_CODES",
    "REASONS",
    "RESULTS",
    "Answer",
    "CubbyholeError",
    "Endpoint",
    "Failed",
    "InvalidWrap",
    "OperatorUnreachable",
    "Receipt",
    "Refusal",
    "Refused",
    "Secret",
    "Token",
    "TokenFileUnreadable",
    "UnexpectedCreationPath",
    "UsageError",
    "Vault",
    "VaultError",
    "VaultUnreachable",
    "Wrap",
    "WrapLookup",
    "WrappingToken",
    "WriteFailed",
    "bootstrap",
    "check_path",
    "endpoint_context",
    "expected_path",
    "redeem",
    "write_token",
]
