"""The ``qiochan`` command run as a subprocess: backends, demo, certs, configuration, errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qiochan.cli import build_parser
from tests.helpers.cli import QIOCHAN, assert_one_line_error, cli_env, run_cli

# runs the command with cryptography made unimportable, as on a machine without it
NO_CRYPTOGRAPHY = (
    "import sys; sys.modules['cryptography'] = None; "
    "from qiochan.cli import main; raise SystemExit(main(sys.argv[1:]))"
)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


def test_usage_and_version(env: dict[str, str]) -> None:
    result = run_cli(env=env)
    assert result.returncode == 2
    assert "usage: qiochan" in result.stderr
    result = run_cli("--version", env=env)
    assert result.returncode == 0
    assert result.stdout.startswith("qiochan ")
    result = run_cli("--help", env=env)
    for command in ("backends", "demo", "relay", "send", "recv", "certs"):
        assert command in result.stdout


def test_backends_table_lists_every_backend(env: dict[str, str]) -> None:
    result = run_cli("backends", env=env)
    assert result.returncode == 0, result.stderr
    for name in ("memory", "socket", "file", "command", "tls", "websocket"):
        assert name in result.stdout
    assert "transport" in result.stdout and "layer" in result.stdout
    assert "available" in result.stdout
    assert "SHUTDOWN" in result.stdout


def test_backends_json_reports_unavailable_ones_with_the_reason(env: dict[str, str]) -> None:
    result = run_cli("backends", "--json", env=env)
    assert result.returncode == 0, result.stderr
    records = {r["name"]: r for r in json.loads(result.stdout)}
    assert records["socket"]["available"] is True
    assert {"tcp", "unix"} <= set(records["socket"]["schemes"])
    assert "LISTEN" in records["socket"]["features"]
    assert records["tls"]["kind"] == "layer"

    blocked = _run_without_cryptography(env, "backends", "--json")
    assert blocked.returncode == 0, blocked.stderr
    tls = {r["name"]: r for r in json.loads(blocked.stdout)}["tls"]
    assert tls["available"] is False
    assert "pip install" in tls["missing"]


def _run_python(env: dict[str, str], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _run_without_cryptography(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return _run_python(env, NO_CRYPTOGRAPHY, *args)


def test_python_dash_m_runs_the_same_command(env: dict[str, str]) -> None:
    assert QIOCHAN[1:] == ["-m", "qiochan"]
    result = run_cli("backends", "--json", env=env)
    assert json.loads(result.stdout)


def test_demo_moves_and_verifies_the_stream_through_every_chain(env: dict[str, str]) -> None:
    result = run_cli("demo", "--size", "2M", env=env)
    assert result.returncode == 0, result.stderr
    for chain in (
        "memory pipe",
        "tcp",
        "unix",
        "command pipe",
        "file",
        "TLS over tcp",
        "websocket over tcp",
        "websocket over TLS",
        "TLS over command pipe",
    ):
        line = next(line for line in result.stdout.splitlines() if chain in line)
        assert " ok " in line, line
    assert "every byte verified" in result.stdout
    assert "2.0 MiB of RAM pages" in result.stderr


def test_demo_lists_unavailable_chains_as_skipped(env: dict[str, str]) -> None:
    result = _run_without_cryptography(env, "demo", "--size", "256K", "--chain", "tls")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    tls_lines = [line for line in out.splitlines() if "TLS" in line]
    assert len(tls_lines) == 3, out
    for line in tls_lines:
        assert "skipped" in line and "pip install" in line, line

    only_memory = cli_env(Path(env["XDG_CONFIG_HOME"]), {"QIOCHAN_PLUGINS": "memory"})
    result = run_cli("demo", "--size", "256K", env=only_memory)
    assert result.returncode == 0, result.stderr
    assert "no plugin provides 'tcp'" in result.stdout
    assert next(line for line in result.stdout.splitlines() if "memory pipe" in line).count("ok")


def test_demo_rejects_bad_options(env: dict[str, str]) -> None:
    result = run_cli("demo", "--size", "lots", env=env)
    assert result.returncode == 2
    assert "is not a size" in result.stderr
    result = run_cli("demo", "--chain", "carrier-pigeon", env=env)
    assert_one_line_error(result, 2, "qiochan demo: error: no chain matches carrier-pigeon")


def test_demo_json_has_one_record_per_chain(env: dict[str, str]) -> None:
    result = run_cli(
        "demo", "--size", "256K", "--chain", "tcp", "--chain", "memory", "--json", env=env
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    names = [record["name"] for record in records]
    assert names == ["memory pipe", "tcp", "TLS over tcp", "websocket over tcp"]
    for record in records:
        assert record["command"] == "demo"
        assert record["outcome"] == "ok" and record["error"] is None
        assert record["bytes"] > 0 and record["seconds"] > 0 and record["mib_per_s"] > 0


def test_certs_creates_qemu_layout(env: dict[str, str], tmp_path: Path) -> None:
    creds = tmp_path / "pki"
    result = run_cli("certs", str(creds), "--hostname", "migration.example", env=env)
    assert result.returncode == 0, result.stderr
    names = {p.name for p in creds.iterdir()}
    assert {"ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem"} <= names
    assert "migration.example" in result.stderr
    from cryptography import x509

    server = x509.load_pem_x509_certificate((creds / "server-cert.pem").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "migration.example" in san.get_values_for_type(x509.DNSName)

    result = run_cli("certs", str(tmp_path / "server-only"), "--no-client", env=env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "server-only" / "client-cert.pem").exists()


def test_certs_errors_are_one_line(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("certs", str(blocker / "pki"), env=env)
    line = assert_one_line_error(result, 1, "qiochan certs: error: cannot create credentials")
    assert line.count(str(blocker)) == 1  # the path once, and the reason
    assert "Not a directory" in line
    result = _run_without_cryptography(env, "certs", str(tmp_path / "pki"))
    assert_one_line_error(result, 1, "unavailable", "pip install")


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["send", "/etc/hostname", "tcp:127.0.0.1"], 2, ["bad destination", "missing ':PORT'"]),
        (["send", "/etc/hostname", "carrier-pigeon"], 2, ["names no configured transport"]),
        (["send", "/etc/hostname", "tcp:localhost:\u00b2"], 2, ["port '\u00b2' is not a number"]),
        (["send", "/etc/hostname", "tcp:a,,b:1"], 2, ["host 'a,b' contains ','"]),
        (["send", "/etc/hostname", "ws://a]b"], 2, ["host 'a]b' contains ']'"]),
        (["send", "/etc/hostname", "fd:\u0661"], 2, ["fd='\u0661' is not a number"]),
        (
            ["send", "/etc/hostname", "tcp:127.0.0.1:1", "--layer", ",: ="],
            2,
            ["',' is not a layer name"],
        ),
        (["send", "/etc/hostname", "pigeon:coop"], 2, ["No transport backend for 'pigeon'"]),
        (["send", "/etc/hostname", "foo:bar"], 2, ["bad destination foo:bar"]),
        (["send", "/etc/hostname", "tcp:127.0.0.1:1"], 1, ["refused", "0 bytes passed"]),
        (["send", "/nonexistent/file", "tcp:127.0.0.1:1"], 2, ["cannot open /nonexistent"]),
        (
            ["recv", "--connect", "tcp:127.0.0.1:1", "/nonexistent/dir/out"],
            2,
            ["cannot write /nonexistent/dir/out"],
        ),
        (
            ["send", "/etc/hostname", "tcp:127.0.0.1:1", "--layer", "tls:creds"],
            2,
            ["not of the form key=value"],
        ),
        (
            [
                "send",
                "/etc/hostname",
                "unix:/nonexistent/sock",
                "--layer",
                "tls:creds=/nonexistent",
            ],
            2,
            ["bad destination", "/nonexistent"],
        ),
        (["relay", "tcp:127.0.0.1:0", "tcp:127.0.0.1:1", "--src-layer", "zip:x=1"], 2, ["zip"]),
        (["send", "/etc/hostname", "tcp:127.0.0.1:1", "--rate-limit", "0"], 2, []),
        (
            ["send", "/etc/hostname", "tcp:127.0.0.1:1", "--rate-limit", "\u0661\u0662M"],
            2,
            ["is not a size"],
        ),
        (
            ["send", "/etc/hostname", "tcp:127.0.0.1:1", "--rate-limit", "9" * 400],
            2,
            ["too large a size"],
        ),
    ],
)
def test_bad_input_gives_one_line_and_an_exit_status(
    env: dict[str, str], args: list[str], code: int, words: list[str]
) -> None:
    result = run_cli(*args, env=env)
    if code == 2 and not words:
        assert result.returncode == 2 and "must be more than 0" in result.stderr
        return
    assert_one_line_error(result, code, *words)


def test_missing_credentials_are_reported_before_any_connection(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = run_cli(
        "recv",
        "tcp:127.0.0.1:0",
        str(tmp_path / "out"),
        "--layer",
        f"tls:creds={tmp_path}",
        env=env,
    )
    assert_one_line_error(result, 2, "bad source", str(tmp_path))


def test_config_names_and_errors(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "transports.toml"
    config.write_text('[transports.nowhere]\naddress = "tcp:127.0.0.1:1"\n')
    result = run_cli("--config", str(config), "send", "/etc/hostname", "nowhere", env=env)
    assert_one_line_error(result, 1, "destination nowhere", "refused")
    # --config after the subcommand works the same, and QIOCHAN_CONFIG too
    result = run_cli("send", "/etc/hostname", "nowhere", "--config", str(config), env=env)
    assert_one_line_error(result, 1, "refused")
    with_env = dict(env, QIOCHAN_CONFIG=str(config))
    assert_one_line_error(run_cli("send", "/etc/hostname", "nowhere", env=with_env), 1, "refused")

    config.write_text('[transports.nowhere]\naddress = "tcp:127.0.0.1:1"\nlayers = "tls"\n')
    result = run_cli("--config", str(config), "backends", env=env)
    assert_one_line_error(result, 2, str(config), "transports.nowhere.layers", "must be an array")
    result = run_cli("--config", str(tmp_path / "absent.toml"), "backends", env=env)
    assert_one_line_error(result, 2, "absent.toml", "no such file")


def test_parser_matches_the_documented_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["relay", "tcp:0:1", "unix:/s", "--connect-src", "--listen-dst", "--dst-layer", "tls:a=b"]
    )
    assert (args.src, args.dst, args.connect_src, args.listen_dst) == (
        "tcp:0:1",
        "unix:/s",
        True,
        True,
    )
    assert args.dst_layers == ["tls:a=b"] and args.src_layers == []
    args = parser.parse_args(
        ["send", "f", "d", "--listen", "--rate-limit", "10M/s", "--layer", "x"]
    )
    assert args.listen and args.rate_limit == 10 << 20 and args.layers == ["x"]
    args = parser.parse_args(["-v", "--no-progress", "recv", "s", "f", "--connect"])
    assert args.verbose == 1 and args.progress is False and args.connect


def test_no_traceback_even_for_internal_errors(env: dict[str, str], tmp_path: Path) -> None:
    # a plugin whose backend hook breaks its contract must not crash the command with a trace
    plugin = tmp_path / "broken_plugin.py"
    plugin.write_text(
        "from qiochan.hookspecs import hookimpl\n"
        "@hookimpl\n"
        "def qiochan_backends():\n"
        "    return ['not a backend']\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv.pop(1)); import broken_plugin; "
        "from qiochan.registry import plugin_manager; plugin_manager().register(broken_plugin); "
        "from qiochan.cli import main; raise SystemExit(main(sys.argv[1:]))"
    )
    result = _run_python(env, code, str(tmp_path), "backends")
    assert_one_line_error(result, 1, "broken_plugin", "expected qiochan.plugin.Backend")


def test_configured_transports_work_as_addresses(env: dict[str, str], tmp_path: Path) -> None:
    from tests.helpers.cli import background

    payload = tmp_path / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 4000)
    config = tmp_path / "transports.toml"
    config.write_text(
        f"""
        [transports.archive]
        address = "file:{tmp_path / "archive.bin"}"

        [transports.inbox]
        address = "tcp:127.0.0.1:0"
        layers = ["websocket:path=/inbox"]
        """
    )
    named = dict(env, QIOCHAN_CONFIG=str(config))
    assert run_cli("send", str(payload), "archive", env=named).returncode == 0
    assert (tmp_path / "archive.bin").read_bytes() == payload.read_bytes()
    result = run_cli("recv", "archive", str(tmp_path / "copy.bin"), env=named)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "copy.bin").read_bytes() == payload.read_bytes()

    with background("recv", "inbox", str(tmp_path / "inbox.bin"), env=named) as receiver:
        address = receiver.listening("source")
        sent = run_cli("send", str(payload), address, "--layer", "websocket:path=/inbox", env=env)
        assert sent.returncode == 0, sent.stderr
        assert receiver.finish().returncode == 0
    assert (tmp_path / "inbox.bin").read_bytes() == payload.read_bytes()


@pytest.mark.parametrize(
    ("command", "layer", "words"),
    [
        ("send", "tls:creds={pki},bogus=1", ["bad destination", "unknown option(s) bogus"]),
        ("recv", "tls:creds={pki},bogus=1", ["bad source", "unknown option(s) bogus"]),
        ("recv", "tls:creds={pki},hostname=h", ["bad source", "hostname= applies to a client"]),
        ("send", "tls:creds={pki},authz=*", ["bad destination", "authz= applies to a server"]),
        ("send", "tls:creds={pki}/missing", ["bad destination", "missing"]),
        ("send", "websocket:path=/p,host=h,nope=1", ["unknown option(s) nope"]),
        ("recv", "websocket:path=/p,host=h", ["host= applies to a client only"]),
    ],
)
def test_layer_options_are_checked_before_the_network(
    env: dict[str, str], tmp_path: Path, command: str, layer: str, words: list[str]
) -> None:
    pki = tmp_path / "pki"
    assert run_cli("certs", str(pki), env=env).returncode == 0
    with socket.socket() as taken:  # bound, not listening: connecting would be refused,
        taken.bind(("127.0.0.1", 0))  # listening would find the address in use
        address = f"tcp:127.0.0.1:{taken.getsockname()[1]}"
        files = ["/etc/hostname", address] if command == "send" else [address, str(tmp_path / "o")]
        result = run_cli(command, *files, "--layer", layer.format(pki=pki), env=env)
    assert_one_line_error(result, 2, *words)
    assert "listening" not in result.stderr and "refused" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_transports_file_entries_are_checked_before_listening(
    env: dict[str, str], tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    assert run_cli("certs", str(pki), env=env).returncode == 0
    config = tmp_path / "transports.toml"
    config.write_text(
        "[transports.incoming]\n"
        'address = "tcp:127.0.0.1:0"\n'
        f'layers = [{{ name = "tls", creds = "{pki}", hostname = "dst.example" }}]\n'
    )
    result = run_cli("--config", str(config), "recv", "incoming", str(tmp_path / "o"), env=env)
    assert_one_line_error(result, 2, "bad source incoming", "hostname= applies to a client")
    assert "listening" not in result.stderr
