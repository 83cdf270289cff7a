"""Polling for a condition with a deadline: the one wait the functional tests share, so a
test states only what it waits for and how long it allows."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """True as soon as `predicate()` is; False once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
