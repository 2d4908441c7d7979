"""``python -m qiochan``: the ``qiochan`` command."""

from .cli import main

raise SystemExit(main())
