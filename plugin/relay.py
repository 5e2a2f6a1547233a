"""The CNI binary's hot path: hand the request to ferryd over its unix socket.

Imports only builtin C modules (`_socket` and `posix`: no `socket`, no `os`, no `json`), and
plugin.defaults, which imports nothing: every millisecond of interpreter start-up is paid per
pod, and `os` alone costs ~1.7 ms, `json` ~10.
Wire format, both ways length-prefixed:
  request  = u32 length | "KEY=VALUE" CNI_* variables joined by NUL | NUL NUL | stdin bytes
  reply    = u32 length | u8 exit code | stdout bytes
"""

import _socket
import posix

from plugin.defaults import AGENT_SOCKET as DEFAULT_SOCKET

DEFAULT_TIMEOUT_S = 60.0
ENV_PREFIX = b"CNI_"
SOCKET_KEY = b'"agentSocket"'
# A request frame holds the CNI_* variables and the config (protocol.MAX_CONFIG_BYTES): ferryd
# refuses larger ones before buffering them, and the binary runs those itself (to refuse them).
MAX_REQUEST_BYTES = 2 << 20
MAX_REPLY_BYTES = 16 << 20


def _timeout() -> float:
    """FERRY_RELAY_TIMEOUT in seconds; anything but a positive number means the default."""
    raw = posix.environ.get(b"FERRY_RELAY_TIMEOUT", b"")
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if 0 < value < 1e9 else DEFAULT_TIMEOUT_S


REPLY_TIMEOUT_S = _timeout()


class AgentGone(Exception):
    """ferryd accepted the request but did not answer (timeout, crash)."""


def encode_request(env: "dict[bytes, bytes]", stdin: bytes) -> bytes:
    """env as posix.environ holds it: bytes keys and values, passed through undecoded."""
    head = b"\0".join(k + b"=" + v for k, v in env.items() if k.startswith(ENV_PREFIX))
    return _frame(head + b"\0\0" + stdin)


def decode_request(payload: bytes) -> "tuple[dict[str, str], bytes]":
    """surrogateescape, as os.environ decodes: a variable that is not UTF-8 reaches the
    validation as the standalone binary sees it, and gets the same answer."""
    head, _, stdin = payload.partition(b"\0\0")
    env = dict(item.split("=", 1) for item in head.decode("utf-8", "surrogateescape")
               .split("\0") if "=" in item)
    return env, stdin


def encode_reply(code: int, stdout: bytes) -> bytes:
    return _frame(bytes([code & 0xFF]) + stdout)


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def read_frame(sock: "_socket.socket", limit: int = MAX_REPLY_BYTES) -> bytes:
    size = int.from_bytes(_read_exact(sock, 4), "big")
    if size > limit:
        raise AgentGone(f"frame of {size} bytes, more than {limit}")
    return _read_exact(sock, size)


def _read_exact(sock: "_socket.socket", size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise AgentGone("connection closed before the reply was complete")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def socket_path(stdin: bytes) -> str:
    """The agent socket: `agentSocket` from the config if it names one, else the default.

    Scanned without json: a plain string value is read in place; only a value with escapes
    (never seen in practice, still valid JSON) pays for decoding the whole config.
    """
    at = stdin.find(SOCKET_KEY)
    if at < 0:
        return DEFAULT_SOCKET
    rest = stdin[at + len(SOCKET_KEY):].lstrip(b" \t\r\n")
    if rest[:1] == b":":
        rest = rest[1:].lstrip(b" \t\r\n")
        if rest[:1] == b'"':
            value, quote, _ = rest[1:].partition(b'"')
            if quote and b"\\" not in value:
                # surrogateescape: bytes that are not UTF-8 reach connect() as they are
                return value.decode("utf-8", "surrogateescape") or DEFAULT_SOCKET
    import json

    try:
        return str(json.loads(stdin).get("agentSocket") or DEFAULT_SOCKET)
    except (ValueError, RecursionError, AttributeError):
        return DEFAULT_SOCKET


def call(path: str, env: "dict[bytes, bytes]",
         stdin: bytes) -> "tuple[int, bytes] | None":
    """(exit code, stdout) from ferryd, or None when no agent listens on `path`.

    Any path that cannot be connected to (missing, refused, too long for a unix socket, under
    a regular file, with a NUL) means no agent: the request runs standalone, where the config's
    validation names what is wrong with agentSocket. A request too large for ferryd runs
    standalone too, which refuses it as ferryd would."""
    frame = encode_request(env, stdin)
    if len(frame) - 4 > MAX_REQUEST_BYTES:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except (OSError, ValueError):  # ValueError: a NUL; UnicodeError is one too
            return None
        sock.settimeout(REPLY_TIMEOUT_S)
        try:  # noqa: SIM105 (contextlib is not a builtin module)
            sock.sendall(frame)
        except OSError:
            pass  # ferryd may have answered and closed early (a refusal): read it below
        try:
            reply = read_frame(sock)
        except (TimeoutError, OSError) as e:
            raise AgentGone(f"{type(e).__name__}: {e}") from None
        if not reply:
            raise AgentGone("empty reply")
        return reply[0], reply[1:]
    finally:
        sock.close()


def try_again_error(reason: str) -> bytes:
    """CNI error 11 without importing json: the text is ours, only the reason is quoted."""
    safe = reason.replace("\\", "/").replace('"', "'").replace("\n", " ")
    return (b'{"cniVersion": "1.1.0", "code": 11, "msg": "ferryd did not answer; try again '
            b'later", "details": "' + safe.encode() + b'"}\n')
