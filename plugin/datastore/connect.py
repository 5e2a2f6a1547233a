"""The backend a datastore config names, connected once per config and process."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from plugin.datastore import Datastore

if TYPE_CHECKING:
    from plugin.config import DatastoreConfig

_shared: dict[str, Datastore] = {}
_shared_lock = threading.Lock()


def shared(conf: DatastoreConfig) -> Datastore:
    """One connection per datastore config and process: ferryd's requests reuse its channels
    instead of connecting per ADD."""
    key = conf.model_dump_json()
    with _shared_lock:
        if key not in _shared:
            _shared[key] = connect(conf)
        return _shared[key]


def connect(conf: DatastoreConfig) -> Datastore:
    """The backend named by datastore.type."""
    if conf.type == "etcd":
        from plugin.datastore.etcd import EtcdDatastore

        return EtcdDatastore(conf)
    raise ValueError(f"unknown datastore type {conf.type!r}")
