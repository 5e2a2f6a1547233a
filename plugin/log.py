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
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "pid": record.process,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STD_ATTRS})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(conf: LogConfig) -> None:
    """Point the 'ferry' logger at conf.file; fall back to stderr if it cannot be written."""
    if log.handlers:
        return
    handler: logging.Handler
    try:
        Path(conf.file).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            conf.file, maxBytes=conf.max_bytes, backupCount=conf.backups)
        os.chmod(conf.file, 0o600)
    except OSError:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(conf.level.upper())
    log.propagate = False
