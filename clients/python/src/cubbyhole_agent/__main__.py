"""``cubbyhole-agent`` (or ``python -m cubbyhole_agent``): ``cubbyhole unwrap --request`` in
Python. Asks, checks, unwraps, writes the token to ``--out``, reports the receipt; progress on
stderr, never a token; the exit code says what happened (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Mapping, Optional

from . import __version__
from .endpoint import Endpoint
from .errors import CubbyholeError
from .flow import bootstrap
from .protocol import DEFAULT_IDENTITY_TOKEN, Receipt
from .vault import Vault

PROG = "cubbyhole-agent"

EPILOG = """exit codes (as `cubbyhole unwrap`):
  0   unwrapped, token written
  2   usage or configuration error
  3   the wrap is not valid (consumed, expired or revoked)
  4   the wrap was created at an unexpected path; NOT consumed
  5   Vault unreachable after the retries, or no answer to unwrap
  6   Vault answered with another error
  7   the identity token file is unreadable or empty
  8   the token cannot be written (checked before unwrapping, too)
  9   the operator refused the ask (reason printed)
  10  the operator's endpoint unreachable after the retries
"""


def parser() -> argparse.ArgumentParser:
    """The command line; flags named after ``cubbyhole unwrap``'s, environment as injected."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Ask cubbyhole's request endpoint for this pod's Vault wrap, check it, "
        "unwrap it and store the token.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--request", help="the operator's endpoint, https:// (env CUBBYHOLE_REQUEST)")
    p.add_argument(
        "--request-ca", help="PEM CA bundle (the text) to trust for the endpoint (env CUBBYHOLE_REQUEST_CA)"
    )
    p.add_argument("--request-ca-file", help="PEM CA bundle file to trust for the endpoint")
    p.add_argument(
        "--identity-token",
        help="the pod's projected service-account token, audience cubbyhole "
        f"(env CUBBYHOLE_IDENTITY_TOKEN; default {DEFAULT_IDENTITY_TOKEN})",
    )
    p.add_argument("--vault-addr", help="Vault address (env VAULT_ADDR)")
    p.add_argument("--ca-cert", help="PEM CA bundle file to trust for Vault (env VAULT_CACERT)")
    p.add_argument("--namespace", help="Vault Enterprise / OpenBao namespace (env VAULT_NAMESPACE)")
    p.add_argument(
        "--expect-path",
        help="the only creation path to accept, auth/token/create/<role> (env CUBBYHOLE_EXPECT_PATH)",
    )
    p.add_argument(
        "--out", required=True, help="where to write the token (mode 0400; use an in-memory volume)"
    )
    p.add_argument("--retries", type=int, default=5, help="retries of transient failures (default 5)")
    p.add_argument("--no-receipt", action="store_true", help="do not report the receipt to the endpoint")
    p.add_argument("--receipt-file", help="also write the receipt line here (e.g. /dev/termination-log)")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _flag_or_env(value: Optional[str], env: Mapping[str, str], name: str) -> Optional[str]:
    return value if value is not None else env.get(name)


def _write_receipt(path: Optional[str], receipt: Receipt, log: logging.Logger) -> None:
    """Best effort, like ``cubbyhole unwrap``'s termination message."""
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(receipt.to_line())
        log.info("receipt written to %s", path)
    except OSError as e:
        log.warning("could not write the receipt to %s: %s", path, e.strerror or type(e).__name__)


def run(args: argparse.Namespace, env: Mapping[str, str], log: logging.Logger) -> int:
    """Runs the command with parsed ``args``; returns the exit code."""
    if args.retries < 0:
        log.error("failed: configuration error: --retries must be 0 or more")
        return 2
    ca_pem = args.request_ca
    if ca_pem is None and args.request_ca_file is None:
        ca_pem = env.get("CUBBYHOLE_REQUEST_CA")
    missing = [
        flag
        for flag, value in (
            ("--request (CUBBYHOLE_REQUEST)", _flag_or_env(args.request, env, "CUBBYHOLE_REQUEST")),
            ("--vault-addr (VAULT_ADDR)", _flag_or_env(args.vault_addr, env, "VAULT_ADDR")),
            (
                "--expect-path (CUBBYHOLE_EXPECT_PATH)",
                _flag_or_env(args.expect_path, env, "CUBBYHOLE_EXPECT_PATH"),
            ),
        )
        if not value
    ]
    if missing:
        log.error("failed: configuration error: %s not set", ", ".join(missing))
        return 2
    try:
        endpoint = Endpoint(
            _flag_or_env(args.request, env, "CUBBYHOLE_REQUEST") or "",
            ca_pem=ca_pem,
            ca_file=args.request_ca_file,
            identity_token_path=_flag_or_env(args.identity_token, env, "CUBBYHOLE_IDENTITY_TOKEN")
            or DEFAULT_IDENTITY_TOKEN,
        )
        vault = Vault(
            _flag_or_env(args.vault_addr, env, "VAULT_ADDR") or "",
            ca_file=_flag_or_env(args.ca_cert, env, "VAULT_CACERT") or None,
            namespace=_flag_or_env(args.namespace, env, "VAULT_NAMESPACE") or None,
        )
        token = bootstrap(
            endpoint,
            vault,
            _flag_or_env(args.expect_path, env, "CUBBYHOLE_EXPECT_PATH") or "",
            out=args.out,
            retries=args.retries,
            report_receipt=not args.no_receipt,
        )
    except CubbyholeError as e:
        log.error("failed: %s", e)
        if e.receipt is not None:
            _write_receipt(args.receipt_file, Receipt.failed(e.receipt), log)
        return e.exit_code
    log.info("done: token with accessor %s written to %s", token.accessor, args.out)
    _write_receipt(args.receipt_file, Receipt.unwrapped(token.accessor), log)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The console script: parses ``argv`` (default ``sys.argv[1:]``), returns the exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help, --version (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    log = logging.getLogger("cubbyhole_agent")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    previous = (log.level, log.propagate)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return run(args, os.environ, log)
    except Exception as e:  # a bug: say what kind, never its words (they are not vetted)
        log.error("failed: internal error (%s); please report it", type(e).__name__)
        return 1
    finally:
        log.removeHandler(handler)
        log.setLevel(previous[0])
        log.propagate = previous[1]


if __name__ == "__main__":
    sys.exit(main())
