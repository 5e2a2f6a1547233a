"""The link reaper: deletes the veth pairs that DEL handed over (plugin.wiring.REAP_GROUP).

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
        serve: DEL defers to us from now on."""
        with Rtnl() as nl:
            self._reap(nl)
        self._thread.start()
        wiring.defer_link_removal(self._pending.set)

    def stop(self) -> None:
        """Back to immediate deletion, and one last pass for what is waiting."""
        wiring.defer_link_removal(None)
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
