"""One module per CNI command; each turns a Request into a Result or None."""

from __future__ import annotations

# typing costs ~3 ms to import; annotations are strings here, so only mypy needs it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..log import Log
    from ..request import Request
    from ..result import Result


def dispatch(command: str, request: Request, log: Log) -> Result | None:
    if command == "ADD":
        from .add import run_add
        return run_add(request, log)
    if command == "DEL":
        from .delete import run_del
        run_del(request, log)
    elif command == "CHECK":
        from .check import run_check
        run_check(request, log)
    elif command == "STATUS":
        from .status import run_status
        run_status(request, log)
    elif command == "GC":
        from .gc import run_gc
        run_gc(request, log)
    return None
