"""The build hook that compiles ``qiochan.qemufile._speedups`` into wheels (``hatch_build.py``).

Real compiles with the system's C compiler: a wheel build gets the extension
(and a working one), a broken compiler gives a warning and a pure-Python
wheel, and ``QIOCHAN_REQUIRE_SPEEDUPS=1`` turns that into an error.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import sysconfig
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("hatchling", reason="the build backend is not installed")
pytest.importorskip("setuptools", reason="setuptools is not installed")
pytestmark = pytest.mark.skipif(
    shutil.which(sysconfig.get_config_var("CC").split()[0]) is None
    or not Path(sysconfig.get_paths()["include"], "Python.h").exists(),
    reason="no C compiler or no Python headers",
)


def _load(path: Path, name: str) -> ModuleType:
    """Import the Python file or extension module at ``path`` as ``name`` (not in sys.modules)."""
    loader = None
    if path.suffix != ".py":
        loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hatch_build() -> ModuleType:
    return _load(ROOT / "hatch_build.py", "qiochan_hatch_build")


@pytest.fixture(autouse=True)
def _speedups_wanted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build as a plain install would, even in CI's pure-Python run (QIOCHAN_NO_SPEEDUPS=1)."""
    monkeypatch.delenv("QIOCHAN_NO_SPEEDUPS", raising=False)


def _hook(hatch_build: ModuleType, directory: Path) -> Any:
    return hatch_build.SpeedupsBuildHook(str(ROOT), {}, None, None, str(directory), "wheel")


def _build_data() -> dict[str, Any]:
    return {"force_include": {}, "pure_python": True, "infer_tag": False}


def test_a_wheel_build_includes_a_working_extension(
    hatch_build: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CFLAGS", "-Werror")  # with the hook's -Wall -Wextra: no warning at all
    hook = _hook(hatch_build, tmp_path)
    data = _build_data()
    hook.initialize("standard", data)
    try:
        assert data["pure_python"] is False and data["infer_tag"] is True
        [(built, target)] = data["force_include"].items()
        assert target == f"qiochan/qemufile/{Path(built).name}"
        # a private copy, not in sys.modules
        module = _load(Path(built), "qiochan.qemufile._speedups")
        assert (module.IO_BUF_SIZE, module.MAX_IOV_SIZE) == (32768, 64)
        core = module.QEMUFileCore()
        core._fast_end = module.IO_BUF_SIZE
        core.put_be64(0x0102030405060708)
        assert core._index == 8
        assert bytes(core._buf[:8]) == bytes(range(1, 9))
    finally:
        hook.finalize("standard", data, str(tmp_path / "qiochan.whl"))
    assert not Path(built).exists()  # the temporary build directory is gone


def test_a_broken_compiler_gives_a_pure_python_wheel(
    hatch_build: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.delenv("QIOCHAN_REQUIRE_SPEEDUPS", raising=False)
    hook = _hook(hatch_build, tmp_path)
    data = _build_data()
    hook.initialize("standard", data)
    hook.finalize("standard", data, str(tmp_path / "qiochan.whl"))
    assert data == _build_data()
    assert "C speedups were not built" in capsys.readouterr().err


def test_require_speedups_makes_a_failed_build_an_error(
    hatch_build: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("QIOCHAN_REQUIRE_SPEEDUPS", "1")
    hook = _hook(hatch_build, tmp_path)
    with pytest.raises(Exception, match="false"):
        hook.initialize("standard", _build_data())
    hook.finalize("standard", {}, str(tmp_path / "qiochan.whl"))


def test_no_speedups_skips_the_build(
    hatch_build: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QIOCHAN_NO_SPEEDUPS", "1")
    hook = _hook(hatch_build, tmp_path)
    data = _build_data()
    hook.initialize("standard", data)
    assert data == _build_data()


def test_sdists_are_left_alone(hatch_build: ModuleType, tmp_path: Path) -> None:
    hook = hatch_build.SpeedupsBuildHook(str(ROOT), {}, None, None, str(tmp_path), "sdist")
    data = _build_data()
    hook.initialize("standard", data)
    assert data == _build_data()
