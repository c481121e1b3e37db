"""The agent's whole procedure, as ``cubbyhole unwrap --request`` runs it: ask for the wrap,
check with Vault where it was created BEFORE consuming it, unwrap, store the token, report."""

from __future__ import annotations

import logging
from typing import Optional, Union

from . import tokenfile
from ._http import describe
from .endpoint import Endpoint
from .errors import BEFORE_WRAP, CubbyholeError, UnexpectedCreationPath, UsageError, WriteFailed
from .protocol import Receipt, Wrap
from .secret import Token, WrappingToken
from .vault import Vault, WrapLookup

log = logging.getLogger("cubbyhole_agent")

#: Every wrap the operator mints is created under this prefix (``auth/token/create/<role>``).
CREATE_PREFIX = "auth/token/create/"


def expected_path(flag: str) -> str:
    """Validates ``--expect-path``: it must name a token role. Returns the path to accept."""
    path = (flag or "").strip().strip("/")
    role = path[len(CREATE_PREFIX) :] if path.startswith(CREATE_PREFIX) else ""
    if not role or "/" in role:
        raise UsageError(f"--expect-path {path!r} is not of the form {CREATE_PREFIX}<role>")
    return path


def check_path(found: WrapLookup, expected: str) -> None:
    """Raises :class:`UnexpectedCreationPath` unless Vault created the wrap at ``expected``."""
    if found.creation_path.strip("/") != expected:
        raise UnexpectedCreationPath(found.creation_path, expected)


def redeem(
    vault: Vault,
    wrap: Union[Wrap, WrappingToken],
    expect_path: str,
    out: Optional[str] = None,
    retries: int = 5,
) -> Token:
    """Looks the wrap up, refuses it (unconsumed) unless created at ``expect_path``, checks
    ``out`` is writable while the wrap is still unused, unwraps it and writes the token to
    ``out`` (0400, atomically) when given. Returns the token."""
    expected = expected_path(expect_path)
    found = vault.lookup(wrap, retries)
    log.info(
        "wrap is valid: created at %s on %s, TTL %d s",
        found.creation_path,
        found.creation_time,
        found.creation_ttl,
    )
    check_path(found, expected)
    if out is not None:
        # A wrap is single-use: make sure the token can be delivered before consuming it.
        try:
            tokenfile.check_writable(out)
        except OSError as e:
            raise WriteFailed(
                f"unwrapped, but cannot write the token: {out}: {describe(e)} "
                "(checked before unwrapping: the wrap is unused)"
            ) from None
    token = vault.unwrap(wrap, retries)
    log.info("unwrapped: token accessor %s, policies %s", token.accessor, list(token.policies))
    if out is not None:
        try:
            tokenfile.write_token(out, token)
        except OSError as e:
            raise WriteFailed(f"unwrapped, but cannot write the token: {out}: {describe(e)}") from None
        log.info("token written to %s", out)
    return token


def report(endpoint: Endpoint, receipt: Receipt) -> bool:
    """Best effort: reports ``receipt`` to the endpoint and logs what came of it."""
    try:
        endpoint.report(receipt)
    except CubbyholeError as e:
        log.warning("could not report the receipt to the operator: %s", e)
        return False
    log.info("receipt reported to the operator")
    return True


def bootstrap(
    endpoint: Endpoint,
    vault: Vault,
    expect_path: str,
    out: Optional[str] = None,
    retries: int = 5,
    report_receipt: bool = True,
) -> Token:
    """Asks the endpoint for the pod's wrap and :func:`redeem` s it; then reports the receipt
    (``unwrapped`` and the token's accessor, or the failure's word once a wrap was held) unless
    ``report_receipt`` is false. Returns the token; raises a :class:`CubbyholeError`."""
    expect_path = expected_path(expect_path)
    wrap = endpoint.ask(retries)
    log.info(
        "the operator handed out wrap %s (binding %s, start %d, valid %d s)",
        wrap.wrap_accessor,
        wrap.binding,
        wrap.start,
        wrap.wrap_ttl_seconds,
    )
    try:
        token = redeem(vault, wrap, expect_path, out, retries)
    except CubbyholeError as e:
        if report_receipt and e.receipt is not None and not isinstance(e, BEFORE_WRAP):
            report(endpoint, Receipt.failed(e.receipt))
        raise
    if report_receipt:
        report(endpoint, Receipt.unwrapped(token.accessor))
    return token
