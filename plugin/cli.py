"""The `ferry` CNI binary: what the container runtime execs for every pod.

Hot path: relay the request to ferryd (plugin.relay, builtin modules only) and print its
answer. Only when no agent listens does the binary load the engine (pydantic, pyroute2)
and do the work itself: standalone mode, slower but complete. An agent that answers with
an error is the result: there is no silent fallback after ferryd took the request.
Either way the request is answered by plugin.handler, as ferryd answers it. The process
plumbing here (stdin, stdout, exit status, the last-resort error) is shared by the
`ferry-host-local` and `ferry-egress` binaries.
"""

import posix
import sys

from plugin import relay

# typing and collections.abc cost ~11 ms of imports per exec: type names stay in strings.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Handler = Callable[[Any], "dict[str, Any] | None"]
STANDALONE_ENV = b"FERRY_STANDALONE"  # set to 1 to skip the agent (benchmarks, debugging)


def _crash(e: BaseException, stdin: bytes) -> None:
    """Last resort of the binaries: whatever escaped becomes a CNI error, never a traceback."""
    try:
        import json

        _enable_site_packages()  # the log (pydantic) is needed even on the relay path
        from plugin.handler import unexpected
        from plugin.protocol import reply_version

        err = unexpected(e, stdin).to_dict(reply_version(stdin))
        out = (json.dumps(err, indent=2) + "\n").encode()
    except BaseException:  # even the error path failed: the fixed text needs nothing
        out = (b'{"cniVersion": "1.1.0", "code": 100, "msg": "internal error", '
               b'"details": "' + type(e).__name__.encode() + b'"}\n')
    _finish(1, out)


def _read_stdin() -> bytes:
    return b"" if posix.environ.get(b"CNI_COMMAND") == b"VERSION" else sys.stdin.buffer.read()


def _finish(code: int, out: bytes) -> None:
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(code)


def serve(handler: "Handler") -> None:
    """Standalone execution of one request by `handler` (the IPAM binary, fallbacks)."""
    stdin = b""
    try:
        stdin = _read_stdin()
        _enable_site_packages()
        from plugin.handler import respond

        reply = respond(_environ(), stdin, handler)
    except Exception as e:
        _crash(e, stdin)
        return
    _finish(*reply)


def _environ() -> "dict[str, str]":
    import os

    return dict(os.environ)


def _enable_site_packages() -> None:
    # The launcher starts Python with -I -S for the relay path (only ferry's own package dir
    # on sys.path); the engine needs the rest of site: .pth files, Debian's dist-packages (bcc).
    if "site" not in sys.modules:
        import site

        site.main()


def _engine(req: "Any") -> "dict[str, Any] | None":
    from plugin import handler

    return handler.run(req)


def main() -> None:
    stdin = b""
    try:
        stdin = _read_stdin()
        reply = _relay_or_run(stdin)
    except Exception as e:
        _crash(e, stdin)
        return
    _finish(*reply)


def _relay_or_run(stdin: bytes) -> "tuple[int, bytes]":
    command = posix.environ.get(b"CNI_COMMAND", b"")
    if command not in (b"", b"VERSION") and not posix.environ.get(STANDALONE_ENV):
        try:
            reply = relay.call(relay.socket_path(stdin), posix.environ, stdin)
        except relay.AgentGone as e:
            return 1, relay.try_again_error(str(e))
        if reply is not None:
            return reply
    _enable_site_packages()
    from plugin.handler import respond

    return respond(_environ(), stdin, _engine)


if __name__ == "__main__":
    main()
