"""All-or-nothing: every step of an ADD registers how to take itself back."""

from __future__ import annotations

from .errors import CniError
from .log import Log

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class Rollback:
    def __init__(self, log: Log) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self._log = log

    def push(self, what: str, undo: Callable[[], object]) -> None:
        self._steps.append((what, undo))

    def run(self) -> None:
        """Undo in reverse order; one failing undo does not stop the others."""
        while self._steps:
            what, undo = self._steps.pop()
            try:
                undo()
                self._log.debug(f"undid: {what}")
            except (CniError, OSError) as exc:
                self._log.error(f"could not undo {what}: {exc}")

    def forget(self) -> None:
        self._steps.clear()
