"""The request handler: one CNI invocation, env + stdin in, (exit code, stdout) out, good or
bad request alike. ferryd answers every relayed request through it, and the binaries
(`ferry` standalone, `ferry-host-local`, `ferry-egress`) every request they run themselves,
so both places answer the same way.

Standard library and plugin.protocol at import time: a binary's crash path imports this
module to turn whatever escaped into a CNI error.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from plugin.protocol import CniError, Code, Request, parse_request, reply_version, version_info

if TYPE_CHECKING:
    from plugin.engine import Context

Handler = Callable[[Request], "dict[str, Any] | None"]


def respond(env: dict[str, str], stdin: bytes, handler: Handler) -> tuple[int, bytes]:
    """Validate the request, run `handler` on it, and render its result or its error."""
    # The config's version when ferry speaks it, also for errors found while validating.
    version = reply_version(stdin)
    try:
        req = parse_request(env, stdin)
        if req.nothing_to_delete:
            return 0, b""
        out = version_info() if req.command == "VERSION" else handler(req)
        return 0, (json.dumps(out, indent=2) + "\n").encode() if out is not None else b""
    except CniError as e:
        err = e
    except Exception as e:  # a bug or an unexpected kernel answer: still a CNI error
        err = unexpected(e, stdin)
    return 1, (json.dumps(err.to_dict(version), indent=2) + "\n").encode()


def unexpected(e: BaseException, stdin: bytes = b"") -> CniError:
    """The CNI error for an exception nobody expected, its traceback in the log file (never
    on stderr). A file system call that failed (a full disk, a read-only store, a path
    through a regular file) is the node's I/O failing: code 5, not an internal error."""
    from plugin.log import log_unexpected
    from plugin.rtnl import NetlinkError

    log_unexpected(e, "unexpected failure", stdin)
    if isinstance(e, OSError) and not isinstance(e, NetlinkError) and (
            e.filename is not None or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS,
                                                  errno.EIO)):
        return CniError(Code.IO_FAILURE, f"I/O failure: {e.strerror}", str(e))
    return CniError(Code.INTERNAL, f"internal error: {type(e).__name__}",
                    f"{type(e).__name__}: {e}")


def run(req: Request, ctx: Context | None = None) -> dict[str, Any] | None:
    """ferry's handler: the engine's commands for the request's network (in cluster mode with
    the workload-endpoint bookkeeping around them). ctx: plugin.engine.Context, what the
    process running the engine hands it (ferryd's link reaper); None standalone."""
    from plugin import engine
    from plugin.config import NetConf, parse

    conf: NetConf = parse(NetConf, req.config)
    commands = engine.COMMANDS
    if conf.datastore is not None:  # cluster mode: workload endpoints around ADD and DEL
        from plugin.cluster.endpoints import commands as with_endpoints

        commands = with_endpoints(commands)
    return engine.dispatch(commands, conf, req, ctx or engine.Context())
