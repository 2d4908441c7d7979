"""Tables and progress bars for the ``qiochan`` command, with ``rich`` when it is installed.

Without ``rich`` (``pip install 'qiochan[cli]'``) tables are printed as plain
aligned text and progress is not shown; everything else works the same.
Progress goes to stderr and only where stderr is a terminal (or when forced),
so piped output stays clean.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Self

__all__ = ["Progress", "TransferRecord", "print_table"]

#: How a transfer (or a demo chain) ended, as ``--json`` reports it.
OUTCOMES = ("ok", "failed", "cut", "interrupted", "timeout", "skipped")


@dataclass
class TransferRecord:
    """One transfer, as ``--json`` prints it: one JSON object on one line of stdout.

    Attributes:
        command: the subcommand (``"send"``, ``"recv"``, ``"demo"``, ``"relay"``).
        name: what moved: the file, the demo chain...
        peer: the other end (address and layers), "" when there is none.
        bytes: bytes moved (for ``recv``: written; for ``send``: sent).
        seconds: how long the transfer took.
        outcome: one of :data:`OUTCOMES`: ``"ok"``; ``"cut"`` (the stream
            ended without a clean end of stream); ``"failed"``;
            ``"interrupted"`` (a signal); ``"timeout"``; ``"skipped"`` (demo).
        error: the error message, None when it succeeded.
    """

    command: str
    name: str
    peer: str = ""
    bytes: int = 0
    seconds: float = 0.0
    outcome: str = "ok"
    error: str | None = None

    @property
    def mib_per_s(self) -> float:
        """Throughput in MiB/s (0 when no time passed)."""
        return self.bytes / self.seconds / (1 << 20) if self.seconds > 0 else 0.0

    def to_json(self) -> str:
        """Return the record as one line of JSON (with ``mib_per_s`` added)."""
        record: dict[str, Any] = asdict(self)
        record["seconds"] = round(self.seconds, 6)
        record["mib_per_s"] = round(self.mib_per_s, 3)
        return json.dumps(record, sort_keys=False)

    def emit(self, file: Any = None) -> None:
        """Print :meth:`to_json` to ``file`` (default: stdout) and flush it."""
        print(self.to_json(), file=sys.stdout if file is None else file, flush=True)


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(
    title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], *, file: Any = None
) -> None:
    """Print a table with a title to ``file`` (default: stdout)."""
    out = sys.stdout if file is None else file
    if _rich_available():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", show_lines=False)
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console(file=out, width=_width(out)).print(table)
        return
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    print(title, file=out)
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=out)


def _width(out: Any) -> int | None:
    """Let rich size tables to a terminal; use a wide fixed width for pipes and files."""
    isatty = getattr(out, "isatty", None)
    return None if isatty is not None and isatty() else 160


class Progress:
    """Byte progress bars on stderr; thread-safe; a no-op when disabled or without rich.

    Args:
        enabled: None shows bars when stderr is a terminal; True/False force it.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._progress: Any = None
        self._lock = threading.Lock()
        if enabled and _rich_available():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("[bold]{task.description}", justify="left"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                _binary_speed_column(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    @property
    def enabled(self) -> bool:
        """True when bars are shown."""
        return self._progress is not None

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, description: str, total: int | None) -> int:
        """Add a bar (``total`` None: no known end); return its id."""
        if self._progress is None:
            return 0
        with self._lock:
            task_id: int = self._progress.add_task(description, total=total)
            return task_id

    def advance(self, task: int, count: int) -> None:
        """Add ``count`` bytes to bar ``task``."""
        if self._progress is not None:
            self._progress.advance(task, count)

    def update(self, task: int, *, completed: int | None = None, description: str = "") -> None:
        """Set bar ``task``'s count and/or description."""
        if self._progress is None:
            return
        changes: dict[str, Any] = {}
        if completed is not None:
            changes["completed"] = completed
        if description:
            changes["description"] = description
        self._progress.update(task, **changes)


def _binary_speed_column() -> Any:
    """A rich progress column showing the speed in MiB/s, as every summary does
    (rich's own ``TransferSpeedColumn`` uses decimal MB/s)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class BinarySpeedColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None:
                return Text("?", style="progress.data.speed")
            return Text(f"{speed / (1 << 20):.1f} MiB/s", style="progress.data.speed")

    return BinarySpeedColumn()
