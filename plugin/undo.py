"""The one rollback mechanism: a stack of inverse steps, unwound in reverse on failure.

Every step of a multi-step change that altered the host pushes its inverse right after (or,
for an inverse that tolerates a half-done step, right before) it; if anything in the block
fails, the stack is unwound and the failure propagates: the host is left as it was found.
ADD uses one for the whole attachment, wiring.setup for the veth pair it creates.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from plugin.log import log


class Undo:
    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []

    def push(self, step: Callable[[], None]) -> None:
        self._steps.append(step)

    def unwind(self, failure: BaseException) -> None:
        """Run every inverse, newest first; one that fails is logged and the rest still run
        (the original failure is what the caller reports)."""
        while self._steps:
            step = self._steps.pop()
            try:
                step()
            except Exception:
                log.exception("rollback step failed after: %s", failure)

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, kind: type[BaseException] | None, failure: BaseException | None,
                 tb: TracebackType | None) -> None:
        if failure is not None:
            self.unwind(failure)
        else:
            self._steps.clear()  # done: nothing to undo any more
