"""netctl's argument handling and output, netd's configuration layering."""

from __future__ import annotations

import json
import socket
import threading
import time
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


@pytest.mark.parametrize(
    "argv",
    [["--json", "network", "ls"], ["network", "ls", "--json"], ["network", "--json", "ls"],
     ["status", "--json"], ["attach", "c", "--network", "n", "--json"],
     ["host", "ls", "--json"], ["endpoint", "ls", "--network", "n", "--json"]],
)
def test_json_anywhere(argv: list[str]) -> None:
    assert cli.build_parser().parse_args(argv).json is True


def test_json_defaults_off() -> None:
    assert cli.build_parser().parse_args(["network", "ls"]).json is False


@pytest.mark.parametrize(
    "argv",
    [["network", "ls", "--json"], ["--json", "network", "ls"], ["network", "bogus", "--json"]],
)
def test_json_errors_are_one_json_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--socket", str(tmp_path / "none.sock"), *argv])
    assert exc.value.code != 0
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["error"]


def _http_server(listener: socket.socket, start_after: float,
                 fillers: list[socket.socket]) -> None:
    """After a while, drop the connections that filled the queue, then answer every
    connection with an empty JSON list."""
    time.sleep(start_after)
    for s in fillers:
        s.close()
    listener.settimeout(5)
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                request = conn.recv(65536)
            except OSError:
                continue
            if request:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\nConnection: close\r\n\r\n[]")


def test_client_retries_a_full_backlog(tmp_path: Path) -> None:
    """A unix socket with a full accept queue refuses connect() with EAGAIN at once; the
    client waits a little and tries again instead of failing."""
    path = str(tmp_path / "busy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    fillers = []
    try:
        while True:  # fill the accept queue
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            fillers.append(s)
            try:
                s.connect(path)
            except BlockingIOError:
                break
        server = threading.Thread(target=_http_server, args=(listener, 0.3, fillers),
                                  daemon=True)
        server.start()
        assert cli.Client(Path(path), timeout=5).request("GET", "/v1/networks") == []
    finally:
        for s in fillers:
            s.close()
        listener.close()


def test_status_rendering_shows_store_and_datapath() -> None:
    status = {
        "host": {"name": "h1", "underlay_ip": "10.0.0.1", "underlay_mtu": 1500},
        "drivers": ["weave"],
        "store": {"reachable": False, "revision": 0, "error": "etcd unreachable"},
        "networks": 2, "endpoints": 3, "last_sync": 0, "applied_revision": 41, "syncs": 9,
        "errors": {},
        "datapath": {"weave": {
            "links": {"nwb1": "bridge", "nwv1": "vxlan", "nwp1": "veth"},
            "networks": {"1": {"bridge": "nwb1", "vxlan": "nwv1"}}, "ports": 1,
            "sleeve": {"networks": {"7": {"tap": "nwt7", "tx_frames": 5, "rx_frames": 4,
                                          "peers": ["10.0.0.2"], "running": True}},
                       "host": {"drops_unknown_vni": 0}},
        }},
    }
    out = cli._print_status(status)
    assert "UNREACHABLE etcd unreachable" in out
    assert "drivers: weave" in out
    assert "weave: 3 links, 1 networks, 1 ports" in out
    assert "sleeve vni 7 (nwt7): 1 peers rx_frames=4 tx_frames=5" in out
    assert "last sync: never" in out


def test_status_shows_each_drivers_worker() -> None:
    now = time.time()
    status = {
        "host": {"name": "h1", "underlay_ip": "10.0.0.1", "underlay_mtu": 1500},
        "drivers": ["openflow", "weave"],
        "store": {"reachable": True, "revision": 50, "error": ""},
        "networks": 2, "endpoints": 3, "last_sync": now - 2, "applied_revision": 41,
        "syncs": 9, "errors": {"endpoint:o/c1": "barrier timed out"},
        "workers": {
            "weave": {"revision": 50, "last_sync": now - 1, "errors": {}, "syncs": 12,
                      "applying_since": 0, "pending": False, "retry_in": 0},
            "openflow": {"revision": 41, "last_sync": now - 2, "syncs": 9,
                         "errors": {"endpoint:o/c1": "barrier timed out"},
                         "applying_since": now - 3.0, "pending": True, "retry_in": 1.5},
        },
        "datapath": {},
    }
    lines = cli._print_status(status).splitlines()
    weave = next(line for line in lines if line.startswith("  weave: revision"))
    assert "revision 50" in weave and "12 syncs" in weave and "idle" in weave
    openflow = next(line for line in lines if line.startswith("  openflow: revision"))
    assert "revision 41" in openflow and "applying for 3." in openflow
    assert "newer state waiting" in openflow and "1 errors, retry in 1.5 s" in openflow
    assert lines.index("workers:") < lines.index(openflow)


def test_driver_ls_shows_backends_overheads_and_options() -> None:
    value = [{
        "name": "flannel", "default_backend": "vxlan", "watch_prefixes": [],
        "backends": [
            {"name": "vxlan", "overhead": 50, "encryption": False, "encryption_overhead": 0},
            {"name": "udp", "overhead": 28, "encryption": True, "encryption_overhead": 28},
        ],
        "options": [{"name": "prefix", "type": "str", "help": "", "default": None},
                    {"name": "port", "type": "int", "help": "", "default": None}],
    }]
    out = cli._print_drivers(value).splitlines()
    assert out[1].split("  ")[0] == "flannel"
    assert "vxlan* (-50), udp (-28, encrypted -28)" in out[1]
    assert out[1].endswith("prefix=str, port=int")


def test_driver_choice_is_the_daemons(tmp_path: Path) -> None:
    """netctl does not keep its own list of drivers or backends: whatever is given goes to
    the daemon, which knows what it loaded (and refuses the rest)."""
    args = cli.build_parser().parse_args(
        ["network", "create", "n", "--subnet", "10.0.0.0/24", "--driver", "someday",
         "--backend", "warp", "-o", "k=v"])
    assert (args.driver, args.backend, args.opt) == ("someday", "warp", ["k=v"])
