"""The `ferry` CNI binary: what the container runtime execs for every pod.

Only the standard library is imported before the request is known to need the engine:
VERSION and malformed requests are answered without loading pydantic or pyroute2.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

from plugin.protocol import (
    LATEST_VERSION,
    CniError,
    Code,
    Request,
    parse_request,
    reply_version,
    version_info,
)

Handler = Callable[[Request], "dict[str, Any] | None"]


def serve(handler: Handler) -> int:
    """Run one CNI invocation: env + stdin in, result or error JSON on stdout, exit code."""
    version = LATEST_VERSION
    try:
        stdin = b"" if os.environ.get("CNI_COMMAND") == "VERSION" else sys.stdin.buffer.read()
        version = reply_version(stdin)
        req = parse_request(os.environ, stdin)
        if req.command == "VERSION":
            _emit(version_info())
            return 0
        out = handler(req)
        if out is not None:
            _emit(out)
        return 0
    except CniError as e:
        _emit(e.to_dict(version))
        return 1
    except Exception as e:  # a bug or an unexpected kernel answer: still a CNI error
        try:
            from plugin.log import log

            log.exception("unexpected failure")
        finally:
            _emit(CniError(Code.INTERNAL, f"internal error: {type(e).__name__}",
                           str(e)).to_dict(version))
        return 1


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def _engine(req: Request) -> dict[str, Any] | None:
    from plugin import engine

    return engine.run(req)


def main() -> None:
    sys.exit(serve(_engine))


if __name__ == "__main__":
    main()
