"""The OpenAPI document and the API's routes describe the same surface."""

from __future__ import annotations

import json
import re
from importlib.resources import files

from netd import api
from netd.errors import Conflict, DatapathError, InvalidInput, NetdError, NotFound


def _openapi() -> dict[str, object]:
    return json.loads(files("netd").joinpath("openapi.json").read_text())


def test_every_route_is_documented_and_back() -> None:
    documented = {
        (method.upper(), path)
        for path, ops in _openapi()["paths"].items()  # type: ignore[attr-defined]
        for method in ops
    }
    served = {
        (method, re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern))
        for method, pattern, _ in api.ROUTES
    }
    assert documented == served


def test_error_statuses() -> None:
    assert api.status_for(InvalidInput("x")) == 400
    assert api.status_for(NotFound("x")) == 404
    assert api.status_for(Conflict("x")) == 409
    assert api.status_for(DatapathError("x")) == 500

    class Odd(NetdError):
        pass

    assert api.status_for(Odd("x")) == 500
