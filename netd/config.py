"""Daemon configuration: defaults, then the TOML config file, then command-line flags."""

from __future__ import annotations

import argparse
import grp
import socket
import tomllib
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from netd import metrics
from netd.errors import InvalidInput
from netd.model import check_name, parse_ip
from netd.store.etcd import EtcdSecurity

DEFAULT_SOCKET = Path("/run/netd/netd.sock")
DEFAULT_STATE_DIR = Path("/var/lib/netd")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
DEFAULT_DOCKER_PLUGIN = "/run/docker/plugins/netd.sock"  # dockerd finds plugin `netd` there
DEFAULT_DOCKER_HOST = "unix:///run/docker.sock"


@dataclass(frozen=True)
class Config:
    host: str = ""
    underlay_ip: str = ""
    store: str = ""
    socket: Path = DEFAULT_SOCKET
    socket_group: str = ""  # group (name or gid) allowed to use the socket besides root
    metrics: str = ""  # HOST:PORT of the Prometheus scrape endpoint ("" = off)
    state_dir: Path = DEFAULT_STATE_DIR
    host_ttl: int = 30
    resync_interval: float = 30.0
    log_level: str = "info"
    log_format: str = "json"
    # etcd TLS and auth (docs/store.md): file paths, user and password
    store_ca: str = ""
    store_cert: str = ""
    store_key: str = ""
    store_user: str = ""
    store_password: str = ""
    # the Docker plugin served by this daemon (docs/runtimes.md): its socket ("" = off)
    # and dockerd's Engine API ("" = $DOCKER_HOST, else DEFAULT_DOCKER_HOST)
    docker_plugin: str = ""
    docker_host: str = ""

    def store_security(self) -> EtcdSecurity:
        return EtcdSecurity(
            ca=self.store_ca, cert=self.store_cert, key=self.store_key,
            user=self.store_user, password=self.store_password,
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="netd",
        description="netd: the per-host overlay networking daemon. Runs in the foreground; "
        "its socket exists once it is ready to serve.",
    )
    p.add_argument("--config", type=Path, help="TOML file with the settings below")
    p.add_argument("--host", help="this host's name (default: the hostname)")
    p.add_argument("--underlay-ip", help="address peers reach this host on "
                   "(default: the address of the default route's interface)")
    p.add_argument("--store", help="etcd://h1:2379,h2:2379, etcds://... (TLS) or "
                   "sqlite:///PATH (default: embedded SQLite in the state dir)")
    p.add_argument("--store-ca", help="etcds: CA file to verify etcd against "
                   "(default: the system's CAs)")
    p.add_argument("--store-cert", help="etcds: client certificate file (with --store-key)")
    p.add_argument("--store-key", help="etcds: client certificate's private key file")
    p.add_argument("--store-user", help="etcd user (with --store-password)")
    p.add_argument("--store-password", help="etcd user's password (prefer the config file: "
                   "command lines are visible to every local user)")
    p.add_argument("--socket", type=Path, help=f"API socket (default {DEFAULT_SOCKET})")
    p.add_argument("--socket-group", help="group (name or number) whose members may use the "
                   "API socket (mode 0660); default: root's group only")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at this address (default: off)")
    p.add_argument("--state-dir", type=Path, help=f"state directory (default {DEFAULT_STATE_DIR})")
    p.add_argument("--host-ttl", type=int, help="seconds before a silent host counts as dead "
                   "(default 30)")
    p.add_argument("--resync-interval", type=float, help="seconds between full resyncs "
                   "(default 30)")
    p.add_argument("--docker-plugin", nargs="?", const=DEFAULT_DOCKER_PLUGIN, metavar="PATH",
                   help="serve the Docker network and IPAM plugin `netd` at PATH "
                        f"(default {DEFAULT_DOCKER_PLUGIN})")
    p.add_argument("--docker-host", metavar="URL", help="dockerd's API, to learn network and "
                   f"container names (default $DOCKER_HOST or {DEFAULT_DOCKER_HOST})")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--log-format", choices=LOG_FORMATS)
    return p


def load(argv: list[str] | None = None) -> Config:
    args = parser().parse_args(argv)
    config = Config()
    if args.config is not None:
        config = _from_file(config, args.config)
    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(Config)
        if getattr(args, f.name, None) is not None
    }
    config = replace(config, **overrides)
    return _finish(config)


def _from_file(config: Config, path: Path) -> Config:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from None
    known = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in known:
            raise InvalidInput(f"config file {path}: unknown setting {raw_key!r}")
        expected = _FILE_TYPES.get(key, str)
        if isinstance(value, bool) or not isinstance(value, expected):
            names = " or ".join(t.__name__ for t in expected) if isinstance(expected, tuple) \
                else expected.__name__
            raise InvalidInput(f"config file {path}: {raw_key} must be a {names}, not {value!r}")
        values[key] = Path(str(value)) if key in ("socket", "state_dir") else value
    return replace(config, **values)


_FILE_TYPES: dict[str, type | tuple[type, ...]] = {
    "host_ttl": int,
    "resync_interval": (int, float),
}


def socket_gid(config: Config) -> int | None:
    """The numeric group of --socket-group (None: leave the socket's group alone)."""
    group = config.socket_group
    if not group:
        return None
    try:
        return int(group) if group.isascii() and group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise InvalidInput(f"--socket-group: no group named {group!r} on this host") from None


def _finish(config: Config) -> Config:
    host = config.host or socket.gethostname().split(".")[0]
    check_name(host, "host name")
    if config.underlay_ip:
        parse_ip(config.underlay_ip, "underlay IP")
    if config.host_ttl < 1:
        raise InvalidInput("--host-ttl must be at least 1 second")
    if config.resync_interval < 1:
        raise InvalidInput("--resync-interval must be at least 1 second")
    for name, choices in (("log_level", LOG_LEVELS), ("log_format", LOG_FORMATS)):
        if getattr(config, name) not in choices:
            raise InvalidInput(
                f"{name.replace('_', '-')} must be one of {', '.join(choices)}, "
                f"not {getattr(config, name)!r}"
            )
    config.store_security().check()
    socket_gid(config)
    if config.metrics:
        metrics.parse_address(config.metrics)
    if config.docker_host and not config.docker_host.startswith(("unix:///", "/")):
        raise InvalidInput(f"--docker-host must be unix:///PATH (dockerd's API socket), "
                           f"not {config.docker_host!r}")
    if config.docker_plugin and not config.docker_plugin.startswith("/"):
        raise InvalidInput(f"--docker-plugin takes an absolute socket path, "
                           f"not {config.docker_plugin!r}")
    return replace(config, host=host, resync_interval=float(config.resync_interval))
