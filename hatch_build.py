"""Build hook: compile ``qiochan.qemufile._speedups`` (QEMUFile's C fast paths) into the wheel.

The extension is optional.  When it cannot be built (no C compiler, no Python
headers) the build goes on with a warning and QEMUFile runs on its pure-Python
core; set ``QIOCHAN_REQUIRE_SPEEDUPS=1`` to make that an error instead, or
``QIOCHAN_NO_SPEEDUPS=1`` to skip the extension altogether.

Editable installs (``pip install -e .``) build it in place, next to its source,
so rerun the install after editing ``qiochan/qemufile/_speedups.c``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.config import BuilderConfig
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = "qiochan/qemufile/_speedups.c"
MODULE = "qiochan.qemufile._speedups"


def compile_extension(root: Path, build_dir: Path, inplace: bool) -> Path:
    """Compile the extension with setuptools' ``build_ext``; return the built file.

    Raises:
        Exception: whatever the compiler or setuptools raised.
    """
    from setuptools import Distribution, Extension

    extension = Extension(MODULE, [SOURCE], extra_compile_args=["-O2", "-Wall", "-Wextra"])
    distribution = Distribution({"name": "qiochan", "ext_modules": [extension]})
    command = distribution.get_command_obj("build_ext")
    command.inplace = inplace
    command.build_lib = str(build_dir / "lib")
    command.build_temp = str(build_dir / "temp")
    cwd = os.getcwd()
    os.chdir(root)  # build_ext resolves sources and the in-place target from here
    try:
        command.ensure_finalized()
        command.run()
        built = command.get_ext_fullpath(MODULE)
    finally:
        os.chdir(cwd)
    return Path(root, built) if inplace else Path(built)


class SpeedupsBuildHook(BuildHookInterface[BuilderConfig]):
    """Adds the compiled extension to wheels (and builds it in place for editable ones)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or os.environ.get("QIOCHAN_NO_SPEEDUPS"):
            return
        root = Path(self.root)
        self._tmp = tempfile.TemporaryDirectory(prefix="qiochan-build-")
        try:
            built = compile_extension(root, Path(self._tmp.name), inplace=version == "editable")
        except Exception as exc:
            if os.environ.get("QIOCHAN_REQUIRE_SPEEDUPS"):
                raise
            print(
                f"warning: qiochan's C speedups were not built ({type(exc).__name__}: {exc}); "
                "QEMUFile will use its pure-Python core",
                file=sys.stderr,
            )
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(built)] = f"qiochan/qemufile/{built.name}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        tmp = getattr(self, "_tmp", None)
        if tmp is not None:
            tmp.cleanup()
