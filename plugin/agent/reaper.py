"""The link reaper: deletes the veth pairs that DEL handed over (plugin.wiring.REAP_GROUP).

ferryd hands its `wake` to the engine (plugin.engine.Context.reap), which passes it to
wiring.teardown: a standalone binary has no reaper and deletes its pairs itself.

A veth's unregister waits for RCU grace periods (~20-30 ms here, CPU idle, RTNL not held),
so ferryd answers DEL before it and deletes every pair waiting by then in one RTM_DELLINK of
the group: one wait for the whole batch. A ferryd killed with pairs still waiting leaves
them in the group; the next start's first pass deletes them.
"""

from __future__ import annotations

import threading

from plugin import wiring
from plugin.log import log
from plugin.rtnl import Rtnl


class LinkReaper:
    def __init__(self) -> None:
        self._pending = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="link-reaper", daemon=True)

    def start(self) -> None:
        """Delete what a previous ferryd left (before reconcile looks at the links), then
        serve."""
        with Rtnl() as nl:
            self._reap(nl)
        self._thread.start()

    def wake(self) -> None:
        """A pair was moved to the group: delete it (with whatever else waits) soon."""
        self._pending.set()

    def stop(self) -> None:
        """One last pass for what is waiting (the servers that hand pairs over have
        stopped)."""
        self._stopping = True
        self._pending.set()
        self._thread.join()
        with Rtnl() as nl:  # what was handed over while the thread's last batch ran
            self._reap(nl)

    def _loop(self) -> None:
        with Rtnl() as nl:  # opened in ferryd's thread, so in the node's namespace
            while True:
                self._pending.wait()
                self._pending.clear()
                self._reap(nl)
                if self._stopping:
                    return

    def _reap(self, nl: Rtnl) -> None:
        try:
            nl.del_group(wiring.REAP_GROUP)
        except OSError:
            log.exception("link reaper: deleting the group failed")
