"""Secrets never show: repr, str, format, f-strings, %-formatting, logging, exceptions,
tracebacks, pickles, copies, attribute dumps."""

from __future__ import annotations

import copy
import logging
import pickle
import traceback

import pytest

from cubbyhole_agent import Receipt, Token, Wrap, WrappingToken
from cubbyhole_agent.errors import VaultError
from cubbyhole_agent.protocol import Answer
from cubbyhole_agent.secret import MASK, redact

VALUE = "hvs.CAESIJ-super-secret-token-value"


def shown(obj: object) -> list:
    """Every way code commonly turns an object into text."""
    return [
        repr(obj),
        str(obj),
        format(obj),
        format(obj, ">80"),
        f"{obj}",
        f"{obj!r}",
        f"{obj!s}",
        "%s" % (obj,),
        "%r" % (obj,),
        "{}".format(obj),
        "{0!r:^100}".format(obj),
        repr([obj]),
        repr({"k": obj}),
        repr((obj,)),
    ]


@pytest.mark.parametrize(
    "secret",
    [WrappingToken(VALUE), WrappingToken(VALUE, "wrap-acc"), Token(VALUE, "acc-1", ["default"], 60)],
    ids=["wrapping", "wrapping-with-accessor", "token"],
)
def test_no_text_form_shows_the_value(secret) -> None:
    for text in shown(secret):
        assert VALUE not in text
        assert MASK in text
    assert secret.reveal() == VALUE


def test_token_shows_its_accessor_and_policies_only() -> None:
    t = Token(VALUE, "acc-1", ["default", "agents"], 600)
    assert repr(t) == "Token(accessor='acc-1', policies=['default', 'agents'], ttl=600, ***)"
    assert repr(WrappingToken(VALUE, "w-acc")) == "WrappingToken(accessor='w-acc', ***)"
    assert repr(WrappingToken(VALUE)) == "WrappingToken(***)"


def test_no_attribute_dump_shows_the_value() -> None:
    t = Token(VALUE, "acc")
    assert not hasattr(t, "__dict__")
    with pytest.raises(TypeError):
        vars(t)
    with pytest.raises(AttributeError):
        t.accessor = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        t.extra = 1  # type: ignore[attr-defined]


def test_pickling_is_refused_and_copies_are_the_same_object() -> None:
    for secret in (Token(VALUE, "acc"), WrappingToken(VALUE)):
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            with pytest.raises(TypeError) as e:
                pickle.dumps(secret, protocol=protocol)
            assert VALUE not in str(e.value)
        assert copy.copy(secret) is secret
        assert copy.deepcopy(secret) is secret
    wrap = Wrap(WrappingToken(VALUE), "acc", "b", 0, 60)
    with pytest.raises(TypeError):
        pickle.dumps(wrap)


def test_equality_without_hashing() -> None:
    assert Token(VALUE, "a") == Token(VALUE, "b")
    assert Token(VALUE, "a") != Token(VALUE + "x", "a")
    assert WrappingToken(VALUE) != Token(VALUE, "a")
    with pytest.raises(TypeError):
        hash(Token(VALUE, "a"))


def test_empty_or_non_string_values_are_refused_without_quoting_them() -> None:
    with pytest.raises(ValueError):
        WrappingToken("")
    with pytest.raises(TypeError) as e:
        WrappingToken(b"bytes-secret")  # type: ignore[arg-type]
    assert "bytes-secret" not in str(e.value)


def test_logging_never_shows_the_value(caplog: pytest.LogCaptureFixture) -> None:
    t = Token(VALUE, "acc")
    w = Wrap(WrappingToken(VALUE), "wacc", "b", 0, 60)
    log = logging.getLogger("test.secrets")
    with caplog.at_level(logging.DEBUG):
        log.debug("token %s", t)
        log.info("token %r", t)
        log.warning("wrap %s and %r", w, w)
        log.error("mapping %(t)s", {"t": t})
        log.info(t)
        log.info("structured", extra={"token": t})
    assert caplog.records
    assert VALUE not in caplog.text
    for record in caplog.records:
        assert VALUE not in record.getMessage()
        assert VALUE not in repr(record.args)
        assert VALUE not in repr(getattr(record, "token", ""))


def test_exceptions_and_tracebacks_never_show_the_value() -> None:
    t = Token(VALUE, "acc")

    def fails(token: Token) -> None:
        raise RuntimeError(f"could not use {token}")

    try:
        fails(t)
    except RuntimeError:
        text = traceback.format_exc()
        with_locals = "".join(
            traceback.TracebackException(*__import__("sys").exc_info(), capture_locals=True).format()
        )
    assert "could not use Token(" in text
    assert VALUE not in text
    assert VALUE not in with_locals


def test_redact_blanks_every_occurrence() -> None:
    w = WrappingToken(VALUE)
    assert redact(f"{VALUE} and {VALUE}!", w, None) == "*** and ***!"
    err = VaultError(redact(f"bad token {VALUE}", w))
    assert VALUE not in str(err) and VALUE not in repr(err) and VALUE not in repr(err.args)


def test_wrap_and_answer_reprs_hide_the_wrapping_token() -> None:
    w = Wrap(WrappingToken(VALUE, "wacc"), "wacc", "agents", 2, 60)
    assert VALUE not in repr(w) and "wacc" in repr(w) and "start=2" in repr(w)
    body = ('{"wrappingToken":"%s"}' % VALUE).encode()
    a = Answer("/v1/wrap", 200, {"cache-control": "no-store"}, body)
    assert VALUE not in repr(a) and VALUE not in str(a)
    assert a.body() == body


def test_receipt_line_is_the_rust_format() -> None:
    assert Receipt.unwrapped("acc123").to_line() == '{"result":"unwrapped","accessor":"acc123"}'
    assert Receipt.failed("invalid-wrapping-token").to_line() == '{"result":"invalid-wrapping-token"}'
