"""The third-party plugin example, built and installed into a fresh virtual environment.

``examples/qiochan-example-plugin`` is its own distribution (``qiochan-xor``).
The test installs it the way a user would -- ``pip install`` into a new
virtual environment, without network (``--no-deps --no-build-isolation``;
the environment sees this one's packages) -- and then, in that
environment's Python, shows it discovered by ``qiochan backends``, usable as
``--layer xor:key=...`` by the command and passing the conformance kit.
It is skipped cleanly where a virtual environment or the build backend is
not to be had.
"""

from __future__ import annotations

import importlib.util
import json
import site
import subprocess
import venv
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "qiochan-example-plugin"
BUILD_BACKEND = "hatchling"

pytestmark = pytest.mark.timeout(180)


def _run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a new virtual environment with the example plugin installed."""
    if importlib.util.find_spec(BUILD_BACKEND) is None:
        pytest.skip(f"the build backend {BUILD_BACKEND} is not installed (pip install hatchling)")
    home = tmp_path_factory.mktemp("venv")
    try:
        venv.EnvBuilder(system_site_packages=True, with_pip=False).create(home)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot create a virtual environment: {exc}")
    python = home / "bin" / "python"
    if not python.exists():
        pytest.skip("the virtual environment has no bin/python")
    # see this environment's packages (qiochan itself, pip, pytest, the build backend)
    # even when it is a virtual environment too, whose packages --system-site-packages misses
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    parent_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    lines = [f"import site; site.addsitedir({d!r})" for d in parent_dirs if Path(d).is_dir()]
    (Path(purelib.stdout.strip()) / "zz_parent_environment.pth").write_text("\n".join(lines) + "\n")
    install = _run(
        python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", EXAMPLE
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def test_not_installed_here() -> None:
    """The example is not part of this environment: only the venv below has it."""
    import qiochan

    assert "xor" not in qiochan.backends()


def test_discovered_by_qiochan_backends(python: Path) -> None:
    result = _run(python, "-m", "qiochan", "backends", "--json")
    assert result.returncode == 0, result.stderr
    xor = {record["name"]: record for record in json.loads(result.stdout)}["xor"]
    assert xor["kind"] == "layer"
    assert xor["available"] is True
    assert xor["plugin"] == "xor"
    table = _run(python, "-m", "qiochan", "backends")
    row = next(line for line in table.stdout.splitlines() if " xor " in line)
    assert "layer" in row and "available" in row


def test_conformance_kit_and_own_tests_pass_in_the_venv(python: Path) -> None:
    result = _run(
        python,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        EXAMPLE,
        "-c",
        EXAMPLE / "pyproject.toml",
        EXAMPLE / "tests",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 passed" in result.stdout, result.stdout


def test_layer_carries_a_stream_between_two_commands(python: Path, tmp_path: Path) -> None:
    original = tmp_path / "original.bin"
    original.write_bytes(bytes(range(256)) * 1024)
    receiver = subprocess.Popen(
        [
            python, "-m", "qiochan", "recv", "tcp:127.0.0.1:0", tmp_path / "received.bin",
            "--layer", "xor:key=c0ffee", "--no-progress",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert receiver.stderr is not None
        line = receiver.stderr.readline()
        assert "listening on" in line, line
        address = line.rsplit(" ", 1)[1].strip()
        sent = _run(python, "-m", "qiochan", "send", original, address, "--layer", "xor:key=c0ffee")
        assert sent.returncode == 0, sent.stderr
        assert receiver.wait(60) == 0
    finally:
        if receiver.poll() is None:
            receiver.kill()
        receiver.communicate()
    assert (tmp_path / "received.bin").read_bytes() == original.read_bytes()
