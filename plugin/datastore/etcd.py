"""The etcd v3 datastore, over etcd's own gRPC API (grpcio, already ferry's dependency).

Why not a client library: python-etcd3 is unmaintained (last release 2020, pinned to old
protobuf), etcd3gw goes through the JSON gateway with `requests`, and aetcd is asyncio-only.
ferry needs eight RPCs, so it carries the subset of etcd's rpc.proto it uses
(etcd_rpc.proto, generated modules committed) and talks to etcd directly.

Layout under the prefix (values are JSON):
  <prefix>/ipam/blocks/<cidr with - for />   {"cidr", "pool", "node"}: the block's affinity
  <prefix>/nodes/<name>                      node record (persistent: routes follow it)
  <prefix>/leases/<name>                     {"renewed": unix time}, attached to the node's
                                             lease: present while the node's ferryd lives
  <prefix>/workloads/<node>/<network.cid.if> workload endpoint
  <prefix>/profiles/<name>                   profile
Block claims are transactions (create only if the key's create_revision is 0), releases
compare the mod revision read, so a claim and a release never both win over one key.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from plugin.cluster.config import DatastoreConfig
from plugin.datastore import (
    Block,
    DatastoreUnavailable,
    Endpoint,
    NodeInfo,
    Profile,
    record,
)
from plugin.datastore import etcd_rpc_pb2 as pb
from plugin.datastore import etcd_rpc_pb2_grpc as pb_grpc
from plugin.log import log

T = TypeVar("T")
# What a member that is down, partitioned or without a leader answers with: try the next one.
RETRY_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
               grpc.StatusCode.UNKNOWN)


# Reconnect within a second of a member coming back (gRPC's default backoff grows to 120 s).
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]


def prefix_end(key: bytes) -> bytes:
    """The range_end that makes [key, end) every key starting with `key`."""
    return key[:-1] + bytes([key[-1] + 1])


class EtcdClient:
    """The KV, lease and watch calls ferry makes, failing over between the endpoints."""

    def __init__(self, conf: DatastoreConfig) -> None:
        self.timeout = conf.timeout_seconds
        creds = None
        if conf.tls is not None:
            def read(path: str | None) -> bytes | None:
                return Path(path).read_bytes() if path else None

            creds = grpc.ssl_channel_credentials(read(conf.tls.ca_file), read(conf.tls.key_file),
                                                 read(conf.tls.cert_file))
        self.channels = []
        for endpoint in conf.endpoints:
            target = endpoint.split("//", 1)[1].rstrip("/")
            self.channels.append(grpc.secure_channel(target, creds, CHANNEL_OPTIONS) if creds
                                 else grpc.insecure_channel(target, CHANNEL_OPTIONS))
        self.current = 0
        self._lock = threading.Lock()

    def _call(self, fn: Callable[[grpc.Channel, bool], T]) -> T:
        """fn(channel, wait_for_ready) on the current member, failing over on an unavailable
        one; when none answers at once, once more on the current member waiting up to the
        timeout for it to come back (a restarted etcd, a channel still in reconnect
        backoff)."""
        with self._lock:
            first = self.current
        last: grpc.RpcError | None = None
        n = len(self.channels)
        for i, wait in [*((i, False) for i in range(n)), (0, True)]:
            idx = (first + i) % n
            try:
                out = fn(self.channels[idx], wait)
            except grpc.RpcError as e:
                if e.code() not in RETRY_CODES:
                    raise DatastoreUnavailable(f"etcd: {e.code().name}: {e.details()}") from None
                last = e
                continue
            if idx != first:
                with self._lock:
                    self.current = idx
            return out
        detail = f"{last.code().name}: {last.details()}" if last else "no endpoint"
        raise DatastoreUnavailable(f"etcd unreachable ({detail})")

    def _unary(self, stub: type, method: str, req: Any) -> Any:
        return self._call(lambda ch, w: getattr(stub(ch), method)(
            req, timeout=self.timeout, wait_for_ready=w))

    def range(self, key: bytes, prefix: bool = False) -> list[Any]:
        req = pb.RangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        return list(self._unary(pb_grpc.KVStub, "Range", req).kvs)

    def put(self, key: bytes, value: bytes, lease: int = 0) -> None:
        self._unary(pb_grpc.KVStub, "Put", pb.PutRequest(key=key, value=value, lease=lease))

    def delete(self, key: bytes, prefix: bool = False) -> int:
        req = pb.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        return self._unary(pb_grpc.KVStub, "DeleteRange", req).deleted

    def txn(self, compare: list[Any], success: list[Any], failure: list[Any] = ()) -> Any:
        req = pb.TxnRequest(compare=compare, success=success, failure=list(failure))
        return self._unary(pb_grpc.KVStub, "Txn", req)

    def create(self, key: bytes, value: bytes) -> bool:
        """Put only if the key does not exist; True when this call created it."""
        absent = pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.CREATE, key=key,
                            create_revision=0)
        put = pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))
        return self.txn([absent], [put]).succeeded

    def delete_if_unchanged(self, key: bytes, mod_revision: int) -> bool:
        same = pb.Compare(result=pb.Compare.EQUAL, target=pb.Compare.MOD, key=key,
                          mod_revision=mod_revision)
        delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key))
        return self.txn([same], [delete]).succeeded

    def grant(self, ttl: int) -> int:
        return self._unary(pb_grpc.LeaseStub, "LeaseGrant", pb.LeaseGrantRequest(TTL=ttl)).ID

    def keepalive(self, lease: int) -> int:
        """Renew the lease once; its remaining TTL (0: the lease has expired)."""
        def once(ch: grpc.Channel, w: bool) -> int:
            replies = pb_grpc.LeaseStub(ch).LeaseKeepAlive(
                iter([pb.LeaseKeepAliveRequest(ID=lease)]), timeout=self.timeout,
                wait_for_ready=w)
            return next(iter(replies)).TTL
        return self._call(once)

    def revoke(self, lease: int) -> None:
        self._unary(pb_grpc.LeaseStub, "LeaseRevoke", pb.LeaseRevokeRequest(ID=lease))

    def watch(self, key: bytes, on_event: Callable[[], None], stop: threading.Event) -> None:
        """One watch stream over a prefix until it breaks or `stop` is set; on_event() per
        response carrying events."""
        create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=key, range_end=prefix_end(key), progress_notify=True))
        ended = threading.Event()

        def requests() -> Iterator[Any]:
            yield create
            while not (ended.is_set() or stop.is_set()):  # the request side stays open
                ended.wait(0.5)

        with self._lock:
            channel = self.channels[self.current]
        stream = pb_grpc.WatchStub(channel).Watch(requests())

        def cancel_on_stop() -> None:
            while not ended.wait(0.5):
                if stop.is_set():
                    stream.cancel()
                    return

        threading.Thread(target=cancel_on_stop, daemon=True, name="etcd-watch-stop").start()
        try:
            for reply in stream:
                if reply.canceled:
                    raise DatastoreUnavailable(f"watch cancelled: {reply.cancel_reason}")
                if reply.events:
                    on_event()
        finally:
            ended.set()

    def rotate(self) -> None:
        """Move to the next endpoint (a broken watch stream does not go through _call)."""
        with self._lock:
            self.current = (self.current + 1) % len(self.channels)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()


class EtcdDatastore:
    """plugin.datastore.Datastore on etcd v3."""

    def __init__(self, conf: DatastoreConfig) -> None:
        self.client = EtcdClient(conf)
        self.prefix = conf.prefix.rstrip("/")
        self._lease = 0
        self._node: NodeInfo | None = None
        self._ttl = 0

    def _key(self, *parts: str) -> bytes:
        return "/".join([self.prefix, *parts]).encode()

    @staticmethod
    def _json(obj: Any) -> bytes:
        return json.dumps(record(obj), sort_keys=True).encode()

    # Blocks.
    def _block_key(self, cidr: str) -> bytes:
        return self._key("ipam", "blocks", cidr.replace("/", "-"))

    def blocks(self) -> list[Block]:
        return [Block(**json.loads(kv.value))
                for kv in self.client.range(self._key("ipam", "blocks", ""), prefix=True)]

    def claim_block(self, block: Block) -> bool:
        return self.client.create(self._block_key(block.cidr), self._json(block))

    def release_block(self, block: Block) -> bool:
        key = self._block_key(block.cidr)
        kvs = self.client.range(key)
        if not kvs or json.loads(kvs[0].value).get("node") != block.node:
            return False
        return self.client.delete_if_unchanged(key, kvs[0].mod_revision)

    # Nodes.
    def register_node(self, node: NodeInfo, ttl: int) -> None:
        self._node, self._ttl = node, ttl
        self.client.put(self._key("nodes", node.name), self._json(node))
        self._lease = self.client.grant(ttl)
        self._write_lease()

    def _write_lease(self) -> None:
        assert self._node is not None
        self.client.put(self._key("leases", self._node.name),
                        json.dumps({"renewed": time.time()}).encode(), lease=self._lease)

    def renew_lease(self) -> None:
        if self._node is None:
            return
        if not self._lease or self.client.keepalive(self._lease) <= 0:
            # Expired while etcd (or we) were away: a new lease, and the node record again
            # (`ferryctl node remove` may have deleted it, or a datastore restore lost it).
            self.register_node(self._node, self._ttl)
            return
        self._write_lease()

    def nodes(self) -> list[NodeInfo]:
        renewed = {kv.key.rsplit(b"/", 1)[1].decode(): json.loads(kv.value).get("renewed", 0)
                   for kv in self.client.range(self._key("leases", ""), prefix=True)}
        out = []
        for kv in self.client.range(self._key("nodes", ""), prefix=True):
            node = NodeInfo(**{**json.loads(kv.value), "lease_age": None})
            if node.name in renewed:
                node.lease_age = max(0.0, time.time() - renewed[node.name])
            out.append(node)
        return out

    def remove_node(self, name: str) -> dict[str, int]:
        released = 0
        for block in self.blocks():
            if block.node == name and self.release_block(block):
                released += 1
        endpoints = self.client.delete(self._key("workloads", name, ""), prefix=True)
        self.client.delete(self._key("leases", name))
        self.client.delete(self._key("nodes", name))
        return {"blocks": released, "endpoints": endpoints}

    # Endpoints and profiles.
    def put_endpoint(self, ep: Endpoint) -> None:
        self.client.put(self._key("workloads", ep.node, ep.key), self._json(ep))

    def get_endpoint(self, node: str, key: str) -> Endpoint | None:
        kvs = self.client.range(self._key("workloads", node, key))
        return Endpoint(**json.loads(kvs[0].value)) if kvs else None

    def delete_endpoint(self, node: str, key: str) -> None:
        self.client.delete(self._key("workloads", node, key))

    def endpoints(self, node: str | None = None) -> list[Endpoint]:
        where = self._key("workloads", node, "") if node else self._key("workloads", "")
        return [Endpoint(**json.loads(kv.value)) for kv in self.client.range(where, prefix=True)]

    def ensure_profile(self, profile: Profile) -> bool:
        return self.client.create(self._key("profiles", profile.name), self._json(profile))

    def profiles(self) -> list[Profile]:
        return [Profile(**json.loads(kv.value))
                for kv in self.client.range(self._key("profiles", ""), prefix=True)]

    # Watch and health.
    def watch(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        watched = (self._key("ipam", "blocks", ""), self._key("nodes", ""))
        threads = [threading.Thread(target=self._watch_one, args=(k, on_change, stop),
                                    daemon=True, name="etcd-watch") for k in watched]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _watch_one(self, key: bytes, on_change: Callable[[], None],
                   stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.client.watch(key, on_change, stop)
            except (grpc.RpcError, DatastoreUnavailable) as e:
                if stop.is_set():
                    return
                log.warning("etcd watch of %s broke: %s", key.decode(), e)
                self.client.rotate()
            if stop.wait(1.0):
                return
            on_change()  # events may have been missed while the stream was down

    def healthy(self) -> bool:
        try:
            self.client.range(self._key("health"))
            return True
        except DatastoreUnavailable:
            return False

    def close(self) -> None:
        self.client.close()
