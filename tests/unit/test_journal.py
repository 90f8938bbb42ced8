"""Secret redaction: nothing a registered secret reaches the journal handler's fields."""

from __future__ import annotations

import logging

import pytest
from systemd.journal import JournalHandler

from vx11d import journal

SECRET = "s3cr3t-token-xyz"
KEY = "sk-remote-key-0123456789"


class CapturingJournal(JournalHandler):
    """The real journal handler, with its final send (the OS boundary) captured."""

    def __init__(self) -> None:
        super().__init__(SYSLOG_IDENTIFIER="vx11-test", VX11_COMPONENT="test")
        self.setFormatter(logging.Formatter("%(message)s"))
        self.addFilter(journal.RedactFilter())
        self.sent: list[dict] = []
        self.send = lambda msg, /, **fields: self.sent.append({"MESSAGE": msg, **fields})


@pytest.fixture
def jlog(monkeypatch):
    monkeypatch.setattr(journal, "_SECRETS", set())
    journal.register_secret(SECRET)
    journal.register_secret(KEY)
    h = CapturingJournal()
    log = logging.getLogger("vx11.test-redact")
    log.addHandler(h)
    log.propagate = False
    yield log, h
    log.removeHandler(h)


def everything(sent: list[dict]) -> str:
    return "\n".join(f"{k}={v}" for entry in sent for k, v in entry.items())


def test_secret_in_a_logged_exception_is_redacted_in_every_journal_field(jlog):
    log, h = jlog
    try:
        raise RuntimeError(f"a bug with secret {SECRET} and key {KEY}")
    except RuntimeError:
        log.exception("handling %s failed", SECRET,
                      extra={"VX11_DETAIL": f"key={KEY}", "CLIENT_HEADER": f"Bearer {KEY}",
                             "VX11_OBJ": {"token": SECRET}})
    text = everything(h.sent)
    assert SECRET not in text and KEY not in text, text
    entry = h.sent[0]
    assert "RuntimeError: a bug with secret [redacted] and key [redacted]" in entry["MESSAGE"]
    assert entry["VX11_DETAIL"] == "key=[redacted]"
    assert entry["CLIENT_HEADER"] == "Bearer [redacted]"
    assert "[redacted]" in entry["EXCEPTION_TEXT"] and "EXCEPTION_INFO" not in entry


def test_secret_in_a_stack_and_a_chained_cause_is_redacted(jlog):
    log, h = jlog
    try:
        try:
            raise KeyError(SECRET)
        except KeyError as e:
            raise ValueError("outer") from e
    except ValueError:
        log.error("failed", exc_info=True, stack_info=True, extra={"MESSAGE_ID": KEY})
    text = everything(h.sent)
    assert SECRET not in text and KEY not in text, text
    assert "KeyError: '[redacted]'" in h.sent[0]["MESSAGE"]
    assert "Stack (most recent call last)" in h.sent[0]["MESSAGE"]


def test_records_without_secrets_pass_unchanged(monkeypatch):
    monkeypatch.setattr(journal, "_SECRETS", set())
    h = CapturingJournal()
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "plain %s", ("arg",), None)
    h.handle(rec)
    assert h.sent[0]["MESSAGE"] == "plain arg"
