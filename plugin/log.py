"""JSON-lines logging to a bounded, rotated file. stdout belongs to the CNI result."""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from pathlib import Path

from plugin.config import LogConfig

log = logging.getLogger("ferry")
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, tracebacks: bool = True) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "pid": record.process,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info and self.tracebacks:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_info and record.exc_info[1] is not None:
            entry["exc"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return json.dumps(entry, default=str)


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Every log file, the first and each one after a rotation, is created 0600: requests,
    container ids and tracebacks are root's business only."""

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        os.fchmod(fd, 0o600)  # a file an older version created with the umask's mode
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


def setup(conf: LogConfig) -> None:
    """Point the 'ferry' logger at conf.file; fall back to stderr if it cannot be written."""
    if log.handlers:
        return
    handler: logging.Handler
    try:
        Path(conf.file).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        handler = PrivateRotatingFileHandler(
            conf.file, maxBytes=conf.max_bytes, backupCount=conf.backups)
        handler.setFormatter(JsonFormatter())
    except (OSError, ValueError):  # ValueError: a NUL in the name
        # stderr reaches the runtime's events: the lines, never a traceback.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter(tracebacks=False))
    log.addHandler(handler)
    log.setLevel(conf.level.upper())
    log.propagate = False


def setup_from_config(stdin: bytes) -> None:
    """Best effort, for a failure before (or while) the config was validated: the config's
    log file if it names a usable one, else the default one (setup's fallback, stderr, gets
    no tracebacks)."""
    if log.handlers:
        return
    from pydantic import ValidationError

    try:
        conf = LogConfig.model_validate(json.loads(stdin).get("log") or {})
    except (ValueError, RecursionError, AttributeError, ValidationError):
        conf = LogConfig()
    setup(conf)


def log_unexpected(e: BaseException, msg: str, stdin: bytes = b"") -> None:
    """The traceback of an exception nobody expected, into the log file (set up from the
    config on `stdin` when that has not happened yet), never onto stderr."""
    setup_from_config(stdin)
    log.error(msg, exc_info=e)
