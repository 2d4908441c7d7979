"""Inspecting migration streams held in memory (bytes), for the qiochan.migration tests."""

from __future__ import annotations

from typing import Any

from qiochan import QEMUFile
from qiochan.migration import StreamReport, inspect_stream


def inspect_bytes(data: bytes, **kwargs: Any) -> StreamReport:
    """Return the report of ``inspect_stream`` on ``data`` (keyword arguments passed on)."""
    f = QEMUFile.open_buffer("r", data)
    try:
        return inspect_stream(f, **kwargs)
    finally:
        f.fclose()
