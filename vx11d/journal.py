"""Logging to journald with structured fields, or to stderr when not under journald.

Every record carries ``VX11_COMPONENT``; events add ``VX11_EVENT`` and their ids
(``VX11_HIJA_ID``, ``VX11_PID``, ...), so ``journalctl VX11_EVENT=hija_expired`` works.
Registered secrets (the API token, the remote API key) are replaced by ``[redacted]``
in messages, exceptions, stacks and every field before any handler sees them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

_SECRETS: set[str] = set()
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def register_secret(value: str) -> None:
    """Never let ``value`` reach a log line (values shorter than 4 chars are ignored)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def _redact(text: str) -> str:
    for s in _SECRETS:
        if s in text:
            text = text.replace(s, "[redacted]")
    return text


class RedactFilter(logging.Filter):
    """Replaces registered secrets in everything a handler may send: the message and its
    arguments, the formatted exception and stack, and every field of the record (the
    journal handler sends each upper-case attribute as a journal field, and the
    exception as ``EXCEPTION_TEXT``/``EXCEPTION_INFO``)."""

    _plain = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not _SECRETS:
            return True
        record.msg = _redact(record.getMessage())
        record.args = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._plain.formatException(record.exc_info)
            record.exc_info = None  # only the redacted text goes on
        if record.exc_text:
            record.exc_text = _redact(record.exc_text)
        if record.stack_info:
            record.stack_info = _redact(record.stack_info)
        for k, v in list(vars(record).items()):
            if k.isupper() and not isinstance(v, str | bytes):
                v = str(v)  # a journal field is its str(): redact that
            if isinstance(v, str):
                setattr(record, k, _redact(v))
            elif isinstance(v, bytes):
                setattr(record, k, _redact(v.decode("utf-8", "replace")))
        return True


class FieldsFormatter(logging.Formatter):
    """stderr format: the message, then the VX11_* fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = " ".join(f"{k[5:].lower()}={v}" for k, v in sorted(vars(record).items())
                          if k.startswith("VX11_") and k not in ("VX11_COMPONENT",))
        return f"{base} {fields}" if fields else base


def under_journald() -> bool:
    """True when stderr is connected to journald (systemd sets $JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}" == dev and f"{st.st_ino}" == ino


def setup(component: str, level: str = "info", *, force_stderr: bool = False
          ) -> logging.Logger:
    """Configure the root logger for one daemon and return the ``vx11.<component>`` logger."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if not force_stderr and under_journald():
        from systemd.journal import JournalHandler

        handler = JournalHandler(SYSLOG_IDENTIFIER=f"vx11-{component}",
                                 VX11_COMPONENT=component)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(FieldsFormatter(f"%(levelname)s vx11-{component}: %(message)s"))
    handler.addFilter(RedactFilter())
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    return logging.getLogger(f"vx11.{component}")


def event(log: logging.Logger, name: str, msg: str, *args: Any, level: int = logging.INFO,
          **fields: Any) -> None:
    """Log one event with ``VX11_EVENT=name`` and ``VX11_<FIELD>=value`` journal fields."""
    extra = {"VX11_EVENT": name}
    for k, v in fields.items():
        if v is not None:
            extra[f"VX11_{k.upper()}"] = str(v)
    log.log(level, msg, *args, extra=extra)
