"""Credentials inside URLs: found (to refuse them in a spec) and masked (in every log line).

`redis://:s3cret@redis:6379` and `redis://redis:6379?password=s3cret` both carry a password. The
operator's spec check refuses them (the CRD has the same rule), but a model stored before that
rule existed, a model_config.json written by hand, or an exception that quotes a URL must still
never put one in a log: `install()` masks every log record, whatever logger (kopf's, redis-py's)
wrote it. Used by both the runtime and the operator.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "***"
#: `scheme://userinfo@`.
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@'\"]+@")
#: DeepRec's bare `userinfo@host:port` (no scheme), as a word of its own.
_BARE_USERINFO = re.compile(r"(?P<head>^|[\s'\"=(\[{,])[^\s/?#@'\"]+@(?P<tail>[A-Za-z0-9.-]+:\d+)")
#: A password-like query parameter (`?password=`, `&pass=`, `;pwd=`).
_QUERY_SECRET = re.compile(r"(?P<head>[?&;](?:password|passwd|pass|pwd)=)[^&\s'\"]*", re.IGNORECASE)
#: What the CRD refuses, and spec.py with it: userinfo before the host, or a password parameter.
_AUTHORITY_USERINFO = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


def url_has_credentials(url: str) -> bool:
    """True when a URL (or DeepRec's bare `host:port`) names a user or a password."""
    return bool(url) and bool(_AUTHORITY_USERINFO.search(url) or _QUERY_SECRET.search(url))


def redact(text: str) -> str:
    """`text` with every URL's userinfo and password parameter replaced by ***."""
    if "@" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    text = _BARE_USERINFO.sub(lambda m: f"{m['head']}{MASK}@{m['tail']}", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)


_installed = False


def install() -> None:
    """Masks credentials in every log record the process creates from now on.

    A record factory, not a handler filter: kopf adds handlers of its own (its stream handler,
    the one that posts Events) and a filter on a logger misses records propagated from child
    loggers, while every record passes through the factory. The message is rendered once here;
    a record whose text needs no change is left as it was.
    """
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: logging reports it later itself
            return record
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters reuse exc_text when it is set: the traceback is masked too.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
