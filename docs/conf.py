"""Sphinx configuration for the qiochan documentation.

Build with warnings as errors, as CI does::

    sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the sources, so autodoc works from a checkout too (the plugins live in plugins/)
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

project = "qiochan"
author = "qiochan developers"
copyright = "qiochan developers, GPL-2.0-or-later"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_inherit_docstrings = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

exclude_patterns = ["_build"]
templates_path: list[str] = []
html_static_path = ["_static"]
html_title = "qiochan"
html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
