"""The CNI binary's hot path: hand the request to ferryd over its unix socket.

Imports only builtin C modules (`_socket` and `posix`: no `socket`, no `os`, no `json`): every
millisecond of interpreter start-up is paid per pod, and `os` alone costs ~1.7 ms, `json` ~10.
Wire format, both ways length-prefixed:
  request  = u32 length | "KEY=VALUE" CNI_* variables joined by NUL | NUL NUL | stdin bytes
  reply    = u32 length | u8 exit code | stdout bytes
"""

import _socket
import posix

DEFAULT_SOCKET = "/run/ferry/ferryd.sock"
REPLY_TIMEOUT_S = float(posix.environ.get(b"FERRY_RELAY_TIMEOUT", b"60"))
ENV_PREFIX = b"CNI_"
SOCKET_KEY = b'"agentSocket"'
_NO_AGENT = (FileNotFoundError, ConnectionRefusedError)


class AgentGone(Exception):
    """ferryd accepted the request but did not answer (timeout, crash)."""


def encode_request(env: "dict[bytes, bytes]", stdin: bytes) -> bytes:
    """env as posix.environ holds it: bytes keys and values, passed through undecoded."""
    head = b"\0".join(k + b"=" + v for k, v in env.items() if k.startswith(ENV_PREFIX))
    return _frame(head + b"\0\0" + stdin)


def decode_request(payload: bytes) -> "tuple[dict[str, str], bytes]":
    head, _, stdin = payload.partition(b"\0\0")
    env = dict(item.split("=", 1) for item in head.decode().split("\0") if "=" in item)
    return env, stdin


def encode_reply(code: int, stdout: bytes) -> bytes:
    return _frame(bytes([code & 0xFF]) + stdout)


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


def read_frame(sock: "_socket.socket") -> bytes:
    size = int.from_bytes(_read_exact(sock, 4), "big")
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
                return value.decode() or DEFAULT_SOCKET
    import json

    try:
        return str(json.loads(stdin).get("agentSocket") or DEFAULT_SOCKET)
    except (ValueError, AttributeError):
        return DEFAULT_SOCKET


def call(path: str, env: "dict[bytes, bytes]", stdin: bytes) -> "tuple[int, bytes] | None":
    """(exit code, stdout) from ferryd, or None when no agent listens on `path`."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(path)
        except _NO_AGENT:
            return None
        sock.settimeout(REPLY_TIMEOUT_S)
        sock.sendall(encode_request(env, stdin))
        try:
            reply = read_frame(sock)
        except (TimeoutError, OSError) as e:
            raise AgentGone(f"{type(e).__name__}: {e}") from None
        return reply[0], reply[1:]
    finally:
        sock.close()


def try_again_error(reason: str) -> bytes:
    """CNI error 11 without importing json: the text is ours, only the reason is quoted."""
    safe = reason.replace("\\", "/").replace('"', "'").replace("\n", " ")
    return (b'{"cniVersion": "1.1.0", "code": 11, "msg": "ferryd did not answer; try again '
            b'later", "details": "' + safe.encode() + b'"}\n')
