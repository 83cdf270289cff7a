"""Who may use the API socket: root, and members of --socket-group; any other user is
refused by the kernel before netd reads a byte."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator

import pytest

from netd.lab import Lab

pytestmark = pytest.mark.root

NOBODY = 65534  # user nobody; group nogroup on Debian
OTHER_GID = 64999  # a group nobody is not in

CONNECT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused"); sys.exit(0)
s.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
print(s.recv(12).decode())
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(hosts=0, store="embedded") as lab:
        host = lab.add_host("h1")
        host.extra_args = ["--socket-group", str(NOBODY)]
        for path in (lab.dir, lab.dir / "h1"):
            os.chmod(path, 0o755)  # let other users reach the socket itself
        lab.start_netd("h1")
        yield lab


def connect_as(lab: Lab, gid: int) -> str:
    result = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={gid}", "--clear-groups",
         "/usr/bin/python3", "-c", CONNECT, str(lab.hosts["h1"].socket)],
        capture_output=True, text=True, timeout=30, check=True,
    )
    return result.stdout.strip()


def test_the_socket_is_group_only(lab: Lab) -> None:
    info = os.stat(lab.hosts["h1"].socket)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == NOBODY


def test_a_member_of_the_socket_group_is_served(lab: Lab) -> None:
    assert connect_as(lab, NOBODY).startswith("HTTP/1.1 200")


def test_another_user_is_refused(lab: Lab) -> None:
    assert connect_as(lab, OTHER_GID) == "refused"
