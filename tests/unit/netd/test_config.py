"""Daemon settings: typed config file values, bounds, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from netd import config
from netd.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('host-ttl = "abc"\n', "host-ttl must be a int"),
        ("host-ttl = true\n", "host-ttl must be a int"),
        ('resync-interval = "x"\n', "resync-interval must be a int or float"),
        ('log-level = "loud"\n', "log-level must be one of"),
        ("store = 5\n", "store must be a str"),
        ("resync-interval = 0\n", "--resync-interval must be at least 1"),
        ("this is not toml\n", "not valid TOML"),
    ],
)
def test_bad_config_file(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "netd.toml"
    f.write_text(text)
    with pytest.raises(InvalidInput, match=message):
        config.load(["--config", str(f)])


def test_bad_flags() -> None:
    with pytest.raises(InvalidInput, match="resync-interval"):
        config.load(["--resync-interval", "-1"])
    with pytest.raises(InvalidInput, match="host-ttl"):
        config.load(["--host-ttl", "0"])


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="cannot read config file"):
        config.load(["--config", str(tmp_path / "nope.toml")])
