"""The relay's wire format and its config scan (the binary's hot path has no json)."""

from __future__ import annotations

import json

import pytest

from plugin import relay


@pytest.mark.parametrize("stdin, want", [
    (b'{"type": "ferry"}', relay.DEFAULT_SOCKET),
    (b'{"agentSocket": "/run/x.sock"}', "/run/x.sock"),
    (b'{"agentSocket" :\n  "/run/y.sock", "a": 1}', "/run/y.sock"),
    (b'{"agentSocket": ""}', relay.DEFAULT_SOCKET),
    (b'{"agentSocket": null}', relay.DEFAULT_SOCKET),
    (b'{"agentSocket": "/run/\\u0078.sock"}', "/run/x.sock"),  # escapes: decoded by json
    (b'{"name": "\\"agentSocket\\": \\"/evil\\""}', relay.DEFAULT_SOCKET),
    (b'not json "agentSocket"', relay.DEFAULT_SOCKET),
])
def test_socket_path(stdin: bytes, want: str) -> None:
    assert relay.socket_path(stdin) == want


def test_socket_path_agrees_with_json_on_plain_values() -> None:
    for path in ("/run/ferry/ferryd.sock", "/tmp/a b/c.sock", "rel.sock"):
        stdin = json.dumps({"cniVersion": "1.0.0", "agentSocket": path}).encode()
        assert relay.socket_path(stdin) == json.loads(stdin)["agentSocket"]


def test_request_round_trip_keeps_only_cni_variables() -> None:
    env = {b"CNI_COMMAND": b"ADD", b"CNI_ARGS": b"A=1;B=x=y", b"PATH": b"/bin",
           b"HOME": b"/root"}
    frame = relay.encode_request(env, b'{"a": 1}')
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    decoded_env, stdin = relay.decode_request(frame[4:])
    assert decoded_env == {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=x=y"}
    assert stdin == b'{"a": 1}'


def test_try_again_error_is_valid_json() -> None:
    out = json.loads(relay.try_again_error('timed "out"\nafter \\ 60 s'))
    assert out["code"] == 11 and out["details"] == "timed 'out' after / 60 s"
