"""netctl's argument handling and output, netd's configuration layering."""

from __future__ import annotations

from pathlib import Path

import pytest

from netd import cli, config
from netd.errors import InvalidInput


def test_table_aligns() -> None:
    out = cli.table([("a", 1), ("long", None)], ["NAME", "N"])
    assert out.splitlines() == ["NAME  N", "a     1", "long"]


def test_unreachable_socket_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--socket", str(tmp_path / "none.sock"), "network", "ls"])
    assert exc.value.code == cli.EXIT_UNREACHABLE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "netd is not running" in err


def test_bad_opt_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--socket", str(tmp_path / "s"), "network", "create", "n", "--subnet",
                  "10.0.0.0/24", "-o", "novalue"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_config_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "netd.toml"
    f.write_text('host = "alpha"\nhost-ttl = 7\nstate_dir = "/tmp/x"\n')
    cfg = config.load(["--config", str(f), "--host-ttl", "9"])
    assert (cfg.host, cfg.host_ttl, cfg.state_dir) == ("alpha", 9, Path("/tmp/x"))


def test_config_errors(tmp_path: Path) -> None:
    f = tmp_path / "netd.toml"
    f.write_text("bogus = 1\n")
    with pytest.raises(InvalidInput, match="unknown setting"):
        config.load(["--config", str(f)])
    with pytest.raises(InvalidInput, match="underlay IP"):
        config.load(["--underlay-ip", "300.1.1.1"])
    with pytest.raises(InvalidInput, match="host name"):
        config.load(["--host", "a/b"])
