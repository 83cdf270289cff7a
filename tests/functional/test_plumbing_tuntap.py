"""TUN/TAP devices of the core plumbing: persistent, adopted again, deleted, and a
name of the other type is refused clearly."""

from __future__ import annotations

import os
import socket

import pytest

from netd.errors import Conflict
from netd.plumbing import tap
from tests.functional.conftest import unique

pytestmark = pytest.mark.root


def test_tun_persists_is_adopted_and_deleted() -> None:
    name = unique("tnt")
    try:
        os.close(tap.open_tun(name))
        assert tap.tap_exists(name)  # persistent: outlives the fd
        index = socket.if_nametoindex(name)
        os.close(tap.open_tun(name))
        assert socket.if_nametoindex(name) == index  # the same device, adopted
        tap.delete_tun(name)
        assert not tap.tap_exists(name)
        tap.delete_tun(name)  # already gone: fine
    finally:
        if tap.tap_exists(name):
            tap.delete_tun(name)


def test_a_tap_name_is_not_opened_as_a_tun() -> None:
    name = unique("tnp")
    try:
        os.close(tap.open_tap(name))
        with pytest.raises(Conflict):
            tap.open_tun(name)
    finally:
        tap.delete_tap(name)
    assert not tap.tap_exists(name)
