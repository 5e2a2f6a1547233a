"""plugin.undo, the one rollback mechanism: inverses run newest first on failure, a failing
inverse does not stop the others, and success leaves nothing to undo."""

from __future__ import annotations

import pytest

from plugin.undo import Undo


def test_a_failure_unwinds_every_step_newest_first_and_propagates() -> None:
    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise OSError("inverse failed")

    with pytest.raises(RuntimeError, match="step 3"), Undo() as undo:
        undo.push(lambda: ran.append("1"))
        undo.push(broken)
        undo.push(lambda: ran.append("2"))
        raise RuntimeError("step 3")
    assert ran == ["2", "broken", "1"]  # the broken inverse was logged, the rest still ran


def test_success_keeps_what_was_done() -> None:
    ran: list[str] = []
    with Undo() as undo:
        undo.push(lambda: ran.append("undone"))
    assert ran == []
    undo.unwind(RuntimeError("later"))  # nothing is left on the stack
    assert ran == []
