"""``qiochan backends``: every discovered backend, available or not, and why."""

from __future__ import annotations

import argparse
import json

from ..registry import Backend, backends
from ._common import EXIT_OK
from ._output import print_table

__all__ = ["backend_rows", "run_backends"]


def _status(backend: Backend) -> str:
    return "available" if backend.available else f"unavailable: {backend.missing}"


def backend_rows() -> list[dict[str, object]]:
    """Return one record per backend, transports first, each sorted by name."""
    records = []
    for backend in sorted(backends().values(), key=lambda b: (b.kind != "transport", b.name)):
        records.append(
            {
                "name": backend.name,
                "kind": backend.kind,
                "schemes": list(backend.schemes),
                "features": sorted(feature.name for feature in backend.features),
                "available": backend.available,
                "missing": backend.missing,
                "plugin": backend.plugin,
                "description": backend.description,
                "status": _status(backend),
                "scheme_text": ", ".join(backend.schemes),
            }
        )
    return records


def run_backends(args: argparse.Namespace) -> int:
    """Print the backends table (or JSON with ``--json``)."""
    records = backend_rows()
    if args.json:
        for record in records:
            del record["scheme_text"], record["status"]
        print(json.dumps(records, indent=2))
        return EXIT_OK
    rows = [
        [
            str(r["name"]),
            str(r["kind"]),
            str(r["scheme_text"]),
            ", ".join(r["features"]) or "-",  # type: ignore[arg-type]
            str(r["status"]),
            str(r["description"]),
        ]
        for r in records
    ]
    print_table(
        "qiochan backends",
        ["backend", "kind", "schemes", "features", "status", "description"],
        rows,
    )
    return EXIT_OK
