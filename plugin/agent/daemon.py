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
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from plugin import engine, relay
from plugin import log as logging_setup
from plugin.agent import metrics
from plugin.agent.reaper import LinkReaper
from plugin.agent.reconcile import reconcile
from plugin.cli import respond
from plugin.config import NetConf, load_file
from plugin.dataplane import fallback, select
from plugin.log import log
from plugin.protocol import CniError

VERSION = "0.1.0"
DEFAULT_GRPC_SOCKET = "/run/ferry/ferryd-grpc.sock"
DEFAULT_METRICS = "127.0.0.1:9661"


@contextlib.contextmanager
def _private_umask() -> Iterator[None]:
    """Sockets are created 0600 from the start, not chmod-ed after a window."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


class RelayServer:
    """Accepts relayed CNI requests; a bounded pool runs them concurrently."""

    def __init__(self, path: str, agent: Agent, workers: int) -> None:
        self.path = path
        self.agent = agent
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._accept_loop, name="relay", daemon=True)

    def start(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket left by a killed ferryd
        with _private_umask():
            self.sock.bind(self.path)
        self.sock.listen(128)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by stop()
            self.pool.submit(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                env, stdin = relay.decode_request(relay.read_frame(conn))
                code, out = self.agent.handle(env, stdin)
                conn.sendall(relay.encode_reply(code, out))
            except (OSError, relay.AgentGone, ValueError) as e:
                log.warning("relay connection failed: %s", e)

    def stop(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.sock.close()
        self.pool.shutdown(wait=True)  # let in-flight ADDs/DELs finish


class Agent:
    def __init__(self, conf: NetConf, raw_conf: dict[str, Any], args: argparse.Namespace):
        self.conf = conf
        self.raw_conf = raw_conf
        self.args = args
        self.started = time.monotonic()
        self.served = 0
        # ferryd loads the node-level dataplane itself, so missing pins are not a reason for
        # `auto` to fall back.
        self.dataplane = select(conf, loading=True)
        self._stop = threading.Event()
        self._inspect_lock = threading.Lock()
        self.cluster: Any = None  # plugin.cluster.agent.ClusterAgent in cluster mode

    def handle(self, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
        """One relayed CNI request, answered exactly as the standalone binary would."""
        command = env.get("CNI_COMMAND", "")
        started = time.monotonic()
        code, out = respond(env, stdin, engine.run)
        self.served += 1
        metrics.observe(command, code, out, time.monotonic() - started)
        return code, out

    def inspect(self) -> dict[str, Any]:
        with self._inspect_lock:  # one map walk at a time, whoever asks
            return self.dataplane.inspect(self.conf)

    def _expire_loop(self) -> None:
        """NAT entries idle for longer than natIdleSeconds go, every natGcSeconds."""
        while not self._stop.wait(self.args.nat_gc_interval):
            try:
                expired = self.dataplane.expire(self.conf, self.args.nat_idle)
            except Exception:
                log.exception("NAT expiry failed")
                continue
            if expired:
                log.info("expired %d idle NAT flows", expired)

    def _load_dataplane(self) -> dict[str, Any]:
        """Compile happens here (or the pins are reused), never in a CNI exec. With `auto`,
        a node that cannot load ebpf gets the fallback dataplane, and the log says why."""
        try:
            return self.dataplane.load(self.conf)
        except CniError as e:
            if self.conf.dataplane != "auto":
                raise
            log.warning("dataplane auto: %s cannot load (%s); using the fallback",
                        self.dataplane.name, e)
            self.dataplane = fallback(self.conf)
            return self.dataplane.load(self.conf)

    def run(self) -> None:
        logging_setup.setup(self.conf.log)
        reaper = LinkReaper()
        reaper.start()
        # Reconcile first: the load then re-syncs only the pods that are alive.
        report = reconcile(self.conf, self.dataplane)
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
        reaper.stop()
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
    p.add_argument("--nat-idle", type=float, default=300.0,
                   help="expire NAT flows idle this many seconds")
    p.add_argument("--nat-gc-interval", type=float, default=30.0,
                   help="seconds between NAT expiry passes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    conf, raw = load_file(args.config)
    args.socket = args.socket or conf.agent_socket
    Agent(conf, raw, args).run()


if __name__ == "__main__":
    main()
