"""The client's vocabulary is the Rust code's and the API document's, read from the sources so
any drift fails here: exit codes and receipt words (``src/agent/unwrap.rs``'s table,
``src/agent/receipt.rs``), reason words with status and retry (``src/request/protocol.rs``,
``api/request-endpoint.openapi.yaml``)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from cubbyhole_agent import errors, protocol
from cubbyhole_agent.errors import EXIT_CODES, FAILURES

from conftest import REPO

if not (REPO / "src" / "agent" / "unwrap.rs").exists():  # installed apart from the repository
    pytest.skip("the Rust sources are not beside this suite", allow_module_level=True)


def rust(path: str) -> str:
    return (REPO / path).read_text(encoding="utf-8")


def consts(block: str) -> Dict[str, str]:
    """``pub const NAME: &str = "value";`` of a Rust block."""
    return dict(re.findall(r'pub const ([A-Z_]+): &str = "([^"]*)";', block))


def module(source: str, name: str) -> str:
    """The body of ``pub mod <name> { ... }`` (up to its closing brace at column 0)."""
    m = re.search(r"^pub mod " + re.escape(name) + r" \{\n(.*?)^\}", source, re.S | re.M)
    assert m, f"pub mod {name} not found"
    return m.group(1)


def all_array(block: str, names: Dict[str, str]) -> Optional[List[str]]:
    """The words of ``pub const ALL: [&str; N] = [...]`` in order, when the block has one."""
    m = re.search(r"pub const ALL: \[&str; (\d+)\] = \[(.*?)\];", block, re.S)
    if not m:
        return None
    words = [names[n] for n in re.findall(r"[A-Z_]+", m.group(2))]
    assert len(words) == int(m.group(1))
    return words


def exit_code_table() -> Dict[int, Optional[str]]:
    """``cubbyhole unwrap``'s table: exit code -> receipt word (None for "none")."""
    doc = "\n".join(
        line[3:].strip() for line in rust("src/agent/unwrap.rs").splitlines() if line.startswith("//!")
    )
    table: Dict[int, Optional[str]] = {}
    for code, _meaning, receipt in re.findall(r"^\|\s*(\d+)\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|$", doc, re.M):
        word = re.search(r"`([a-z-]+)`", receipt)
        assert word or receipt == "none", f"receipt cell {receipt!r}"
        table[int(code)] = word.group(1) if word else None
    return table


def test_exit_codes_and_receipts_are_cubbyhole_unwraps() -> None:
    table = exit_code_table()
    assert len(table) == 10, table
    assert EXIT_CODES == table
    assert sorted(f.exit_code for f in FAILURES) == sorted(c for c in table if c != 0)
    for failure in FAILURES:
        assert table[failure.exit_code] == failure.receipt, failure.__name__
    assert errors.Refused.exit_code == 9 and errors.OperatorUnreachable.exit_code == 10


def test_receipt_words_are_the_operators() -> None:
    block = module(rust("src/agent/receipt.rs"), "result")
    words = consts(block)
    assert set(words.values()) == set(protocol.RESULTS)
    order = all_array(block, words)
    if order is not None:
        assert order == list(protocol.RESULTS)


def reasons_of_protocol_rs() -> Tuple[Dict[str, Tuple[int, bool]], Optional[List[str]]]:
    source = rust("src/request/protocol.rs")
    block = module(source, "reason")
    names = consts(block)
    # The Rust unit test's table pins status and retry of every reason word.
    rows = re.findall(r"\(([A-Z_]+),\s*(\d{3}),\s*(true|false)\)", source)
    assert len(rows) == len(names), "every reason in protocol.rs's test table"
    table = {names[n]: (int(status), retry == "true") for n, status, retry in rows}
    return table, all_array(block, names)


def test_reason_words_statuses_and_retries_are_the_endpoints() -> None:
    table, order = reasons_of_protocol_rs()
    assert protocol.REASONS == table
    if order is not None:
        assert list(protocol.REASONS) == order
    # Only the transient ones are retried by the client.
    assert {r for r in table if protocol.retriable(r)} == {
        "RateLimited",
        "Retry",
        "VaultUnavailable",
        "Internal",
    }


def openapi_path() -> Path:
    return Path(os.environ.get("CUBBYHOLE_OPENAPI") or REPO / "api" / "request-endpoint.openapi.yaml")


def test_reason_and_receipt_words_are_the_api_documents() -> None:
    yaml = pytest.importorskip("yaml")
    path = openapi_path()
    assert path.exists(), f"{path} (the API document) is missing"
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    listed = [(r["reason"], r["status"], r["retry"]) for r in doc["x-refusal-reasons"]]
    assert listed == [(word, status, retry) for word, (status, retry) in protocol.REASONS.items()]
    schemas = doc["components"]["schemas"]
    assert schemas["Refusal"]["properties"]["reason"]["enum"] == list(protocol.REASONS)
    assert schemas["Receipt"]["properties"]["result"]["enum"] == list(protocol.RESULTS)
    assert {protocol.WRAP_PATH, protocol.RECEIPT_PATH} <= set(doc["paths"])
    # Only the retried reasons come with a Retry-After the client honours.
    for r in doc["x-refusal-reasons"]:
        assert not r["retryAfter"] or r["retry"], r["reason"]
