"""ferryd: the node agent (the ipamd of this design).

It executes the CNI requests that the `ferry` binary relays over a root-only unix socket
with the same engine as standalone mode (so both can serve one node side by side: they
share the on-disk IPAM store and the attachment records, under the same locks), serves a
gRPC API for control and introspection, exports Prometheus metrics, reconciles the node at
start and stops cleanly on SIGTERM (in-flight requests finish, sockets are removed).
Pods keep working while it is down: the kernel holds their links, routes and dataplane.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select as select_
import selectors
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugin import VERSION, handler, relay
from plugin import log as logging_setup
from plugin.agent import metrics
from plugin.agent.reaper import LinkReaper
from plugin.agent.reconcile import reconcile
from plugin.conffile import load_file
from plugin.config import NetConf
from plugin.dataplane import mode
from plugin.dataplane.base import Inspection
from plugin.engine import Context, cni_path
from plugin.log import log
from plugin.paths import private_umask
from plugin.protocol import CniError, Code

DEFAULT_GRPC_SOCKET = "/run/ferry/ferryd-grpc.sock"
DEFAULT_METRICS = "127.0.0.1:9661"


@dataclass
class _Incoming:
    """A connection whose request is still arriving."""

    deadline: float
    buf: bytearray = field(default_factory=bytearray)


class RelayServer:
    """Accepts relayed CNI requests; a bounded pool runs them concurrently.

    One thread reads the requests of all connections (non-blocking, each with a deadline and
    a size bound), so a connection that sends nothing or too much holds no worker and no
    memory; only a complete request goes to the pool. A request whose client has gone by the
    time a worker takes it is not run, and an ADD whose answer cannot be delivered is undone
    (DEL of the same attachment): the runtime, told "try again" (11), retries from scratch.
    """

    REQUEST_DEADLINE_S = 10.0  # from connect to the last byte of the request
    REPLY_DEADLINE_S = 10.0
    MAX_INCOMING = 64  # connections still sending; past that the oldest one is dropped
    MAX_QUEUED = 256   # complete requests waiting for a worker; past that: "try again"

    def __init__(self, path: str, agent: Agent, workers: int) -> None:
        self.path = path
        self.agent = agent
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._selector = selectors.DefaultSelector()
        self._incoming: dict[socket.socket, _Incoming] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._thread = threading.Thread(target=self._read_loop, name="relay", daemon=True)

    def start(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket left by a killed ferryd
        with private_umask():
            self.sock.bind(self.path)
        self.sock.listen(128)
        self.sock.setblocking(False)
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread.start()

    def _read_loop(self) -> None:
        try:
            while True:
                now = time.monotonic()
                timeout = min((c.deadline for c in self._incoming.values()), default=now + 1)
                for key, _ in self._selector.select(max(0.0, timeout - now)):
                    if key.fileobj is self._wake_r:
                        return
                    try:
                        if key.fileobj is self.sock:
                            self._accept()
                        else:
                            self._receive(key.fileobj)  # type: ignore[arg-type]
                    except Exception:  # one connection's trouble must not stop the reader
                        log.exception("relay: reading a request failed")
                        if key.fileobj is not self.sock:
                            self._drop(key.fileobj)  # type: ignore[arg-type]
                now = time.monotonic()
                for conn in [c for c, inc in self._incoming.items() if inc.deadline <= now]:
                    log.warning("relay: request not complete within %.0fs; connection dropped",
                                self.REQUEST_DEADLINE_S)
                    self._drop(conn)
        except Exception:
            log.exception("relay reader failed")
        finally:
            for conn in list(self._incoming):
                self._drop(conn)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # closed by stop()
            conn.setblocking(False)
            if len(self._incoming) >= self.MAX_INCOMING:
                oldest = min(self._incoming, key=lambda c: self._incoming[c].deadline)
                log.warning("relay: %d connections still sending; dropping the oldest",
                            len(self._incoming))
                self._drop(oldest)
            self._incoming[conn] = _Incoming(time.monotonic() + self.REQUEST_DEADLINE_S)
            self._selector.register(conn, selectors.EVENT_READ)

    def _drop(self, conn: socket.socket) -> None:
        self._incoming.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn)
        conn.close()

    def _receive(self, conn: socket.socket) -> None:
        inc = self._incoming[conn]
        try:
            data = conn.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)  # the client went before its request was complete
            return
        inc.buf += data
        if len(inc.buf) < 4:
            return
        size = int.from_bytes(inc.buf[:4], "big")
        if size > relay.MAX_REQUEST_BYTES:
            log.warning("relay: request of %d bytes refused", size)
            self._detach(conn)
            self._answer_now(conn, Code.DECODE_FAILURE, "request too large",
                             f"{size} bytes, at most {relay.MAX_REQUEST_BYTES}")
            return
        if len(inc.buf) < 4 + size:
            return
        self._detach(conn)
        with self._queued_lock:
            busy = self._queued >= self.MAX_QUEUED
            self._queued += not busy
        if busy:
            self._answer_now(conn, Code.TRY_AGAIN_LATER, "ferryd is busy; try again later")
            return
        self.pool.submit(self._serve, conn, bytes(inc.buf[4:4 + size]))

    def _detach(self, conn: socket.socket) -> None:
        """The connection leaves the reader (not closed)."""
        self._incoming.pop(conn, None)
        self._selector.unregister(conn)
        conn.setblocking(True)
        conn.settimeout(self.REPLY_DEADLINE_S)

    def _answer_now(self, conn: socket.socket, code: int, msg: str, details: str = "") -> None:
        with conn, contextlib.suppress(OSError):
            conn.sendall(_error_reply(code, msg, details))

    def _serve(self, conn: socket.socket, payload: bytes) -> None:
        with self._queued_lock:
            self._queued -= 1
        with conn:
            try:
                env, stdin = relay.decode_request(payload)
                if _peer_gone(conn):
                    log.warning("relay: client gone before its %s started; not run",
                                env.get("CNI_COMMAND"), extra={
                                    "container": env.get("CNI_CONTAINERID")})
                    return
                code, out = self.agent.handle(env, stdin)
                if not _deliver(conn, relay.encode_reply(code, out)):
                    self._undo(env, stdin, code)
            except Exception as e:
                log.exception("relay request failed")
                _deliver(conn, _error_reply(Code.INTERNAL, f"internal error: {type(e).__name__}",
                                            str(e)))

    def _undo(self, env: dict[str, str], stdin: bytes, code: int) -> None:
        """Nobody received the answer: an ADD that succeeded is undone, so the runtime's
        retry finds the node as it was (it was told nothing, or 11)."""
        command = env.get("CNI_COMMAND")
        log.warning("relay: client gone before the answer to its %s", command,
                    extra={"container": env.get("CNI_CONTAINERID"), "code": code})
        if command == "ADD" and code == 0:
            del_code, _ = self.agent.handle({**env, "CNI_COMMAND": "DEL"}, stdin)
            log.info("relay: undelivered ADD undone", extra={
                "container": env.get("CNI_CONTAINERID"), "code": del_code})

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._wake_w.send(b"x")
        self._thread.join()
        self.sock.close()
        self.pool.shutdown(wait=True)  # let in-flight ADDs/DELs finish


def _peer_gone(conn: socket.socket) -> bool:
    """The client closed its end (it timed out or was killed). A poll, not a recv: the
    connection has a timeout, with which a recv would wait for data first."""
    poller = select_.poll()
    poller.register(conn, select_.POLLIN | select_.POLLRDHUP)
    return any(ev & (select_.POLLHUP | select_.POLLRDHUP | select_.POLLERR | select_.POLLNVAL)
               for _, ev in poller.poll(0))


def _deliver(conn: socket.socket, reply: bytes) -> bool:
    if _peer_gone(conn):
        return False
    try:
        conn.sendall(reply)
    except OSError:
        return False
    return True


def _error_reply(code: int, msg: str, details: str = "") -> bytes:
    err = CniError(code, msg, details).to_dict()
    return relay.encode_reply(1, (json.dumps(err, indent=2) + "\n").encode())


class Agent:
    def __init__(self, conf: NetConf, raw_conf: dict[str, Any], args: argparse.Namespace):
        self.conf = conf
        self.raw_conf = raw_conf
        self.args = args
        self.started = time.monotonic()
        self.served = 0
        # ferryd loads the node-level dataplane itself, so missing pins are not a reason for
        # `auto` to fall back.
        self.dataplane = mode.choose(conf, loading=True)
        self._stop = threading.Event()
        self._inspect_lock = threading.Lock()
        self.reaper = LinkReaper()
        # What the engine gets from ferryd: DEL hands veth pairs to the reaper.
        self.ctx = Context(reap=self.reaper.wake)
        self.cluster: Any = None  # plugin.cluster.agent.ClusterAgent in cluster mode

    def handle(self, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
        """One relayed CNI request, answered exactly as the standalone binary would."""
        command = env.get("CNI_COMMAND", "")
        started = time.monotonic()
        code, out = handler.respond(env, stdin, lambda req: handler.run(req, self.ctx))
        self.served += 1
        metrics.observe(command, code, out, time.monotonic() - started)
        return code, out

    def inspect(self) -> Inspection:
        with self._inspect_lock:  # one map walk at a time, whoever asks
            return self.dataplane.inspect(self.conf)

    def nat_stats(self) -> dict[str, Any]:
        with self._inspect_lock:
            return self.dataplane.nat_stats(self.conf)

    def _expire_loop(self) -> None:
        """NAT entries idle past the config's natTimeouts (or --nat-idle) go, every
        --nat-gc-interval seconds."""
        while not self._stop.wait(self.args.nat_gc_interval):
            try:
                expired = self.dataplane.expire(self.conf, self.args.nat_idle)
            except Exception:
                log.exception("NAT expiry failed")
                continue
            if expired:
                log.info("expired %d idle NAT flows", expired)

    def _load_dataplane(self) -> dict[str, Any]:
        """Compile happens here (or the pins are reused), never in a CNI exec. What loaded
        (the fallback, under `auto`, if ebpf could not) is the dataplane of every request
        this process serves."""
        self.dataplane, summary = mode.load(self.conf, dataplane=self.dataplane)
        mode.adopt(self.conf, self.dataplane)
        return summary

    def run(self) -> None:
        logging_setup.setup(self.conf.log)
        self.reaper.start()
        # Reconcile first: the load then re-syncs only the pods that are alive.
        report = reconcile(self.conf, self.dataplane, self.ctx, self.raw_conf, cni_path())
        loaded = self._load_dataplane()
        log.info("ferryd starting", extra={"network": self.conf.name, "version": VERSION,
                                           "dataplane": self.dataplane.name,
                                           "reconcile": vars(report), "load": loaded})
        if self.conf.datastore is not None:
            from plugin.cluster.agent import ClusterAgent

            self.cluster = ClusterAgent(self.conf)
            self.cluster.start()
        relay_server = RelayServer(self.args.socket, self, self.args.workers)
        relay_server.start()
        from plugin.agent.service import start_grpc

        grpc_server = start_grpc(self, self.args.grpc_socket)
        if self.args.metrics != "off":
            host, _, port = self.args.metrics.rpartition(":")
            metrics.serve(self, host or "127.0.0.1", int(port))
        threading.Thread(target=self._expire_loop, name="nat-gc", daemon=True).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        print(json.dumps({"ready": True, "socket": self.args.socket,
                          "grpc": self.args.grpc_socket, "pid": os.getpid()}), flush=True)
        self._stop.wait()
        log.info("ferryd stopping")
        relay_server.stop()
        if self.cluster is not None:
            self.cluster.stop()
        grpc_server.stop(grace=5).wait()
        self.reaper.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.args.grpc_socket)
        log.info("ferryd stopped")

    def stop(self) -> None:
        self._stop.set()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ferryd", description="ferry's node agent")
    p.add_argument("--config", required=True, help="the CNI .conflist/.conf with ferry in it")
    p.add_argument("--socket", help="unix socket the ferry binary relays to (0600); "
                   "default: the config's agentSocket")
    p.add_argument("--grpc-socket", default=DEFAULT_GRPC_SOCKET, help="gRPC unix socket")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help="host:port for Prometheus metrics, or 'off'")
    p.add_argument("--workers", type=int, default=8, help="concurrent CNI requests")
    p.add_argument("--nat-idle", type=float, default=None,
                   help="expire every NAT flow idle this many seconds (default: the "
                   "config's natTimeouts, per protocol and TCP state)")
    p.add_argument("--nat-gc-interval", type=float, default=30.0,
                   help="seconds between NAT expiry passes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """A failure to start is one line on stderr and exit status 1; an unexpected one has its
    traceback in the log file (the config's, once it could be read), never on stderr."""
    args = parse_args(argv)
    try:
        conf, raw = load_file(args.config)
        logging_setup.setup(conf.log)
        args.socket = args.socket or conf.agent_socket
        Agent(conf, raw, args).run()
    except CniError as e:
        print(f"ferryd: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        logging_setup.log_unexpected(e, "ferryd failed")
        print(f"ferryd: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
