"""The ``qiochan`` command (also ``python -m qiochan``): one module per subcommand.

``_main`` builds the argument parser and dispatches; each subcommand's module
(``_backends``, ``_demo``, ``_relay``, ``_transfer``, ``_certs``) is imported only
when it runs.  ``_common`` and ``_output`` hold what they share.
"""

from __future__ import annotations

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
