"""Property tests for every parser of user input: any text either parses to a canonical
value that parses again to itself, or is refused with InvalidInput — never another
exception (which the API would turn into a 500)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from netd import container
from netd.errors import InvalidInput, NotFound
from netd.model import (
    check_ifname,
    check_mac,
    check_name,
    check_options,
    parse_ip,
    parse_subnet,
)
from netd.plugin import DriverSpec, OptionSpec
from tests.support.drivers import weave_backend

SPEC = DriverSpec(
    name="t", backends=(weave_backend("fastdp"),), default_backend="fastdp",
    options=(OptionSpec("s", str, "text"), OptionSpec("n", int, "number"),
             OptionSpec("b", bool, "flag")),
)

# text that looks like the real thing as well as anything at all
near_ip = st.builds(lambda parts, tail: ".".join(map(str, parts)) + tail,
                    st.lists(st.integers(-1, 300), min_size=1, max_size=5),
                    st.sampled_from(["", "\n", " ", "/24", "/33", "x"]))
near_mac = st.builds(lambda parts, tail: ":".join(f"{p:02x}" for p in parts) + tail,
                     st.lists(st.integers(0, 255), min_size=5, max_size=7),
                     st.sampled_from(["", "\n", " ", ":"]))
anything = st.text(max_size=80)


def parses_or_refuses(parse: Callable[[str], Any], value: str) -> Any:
    try:
        return parse(value)
    except InvalidInput as exc:
        assert str(exc) and "\n" not in str(exc).strip("\n")
        return None


@settings(max_examples=300, deadline=None)
@given(st.one_of(anything, near_ip))
def test_ip(value: str) -> None:
    ip = parses_or_refuses(parse_ip, value)
    if ip is not None:
        assert str(ip) == value and parse_ip(str(ip)) == ip


@settings(max_examples=300, deadline=None)
@given(st.one_of(anything, near_ip))
def test_subnet(value: str) -> None:
    net = parses_or_refuses(parse_subnet, value)
    if net is not None:
        assert str(net) == value and parse_subnet(str(net)) == net


@settings(max_examples=300, deadline=None)
@given(st.one_of(anything, near_mac))
def test_mac(value: str) -> None:
    mac = parses_or_refuses(check_mac, value)
    if mac is not None:
        assert mac == value.lower() and check_mac(mac) == mac


@settings(max_examples=300, deadline=None)
@given(anything)
def test_names_and_ifnames(value: str) -> None:
    for parse in (lambda v: check_name(v, "name"), check_ifname):
        name = parses_or_refuses(parse, value)
        if name is not None:
            assert name == value and value.isascii() and value.isprintable()
            assert "/" not in value and " " not in value


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["s", "n", "b", "x", ""]),
                       st.one_of(anything, st.integers(), st.booleans(), st.none(),
                                 st.floats(allow_nan=True)), max_size=4))
def test_driver_options(value: dict[str, Any]) -> None:
    options = parses_or_refuses(lambda v: check_options(v, SPEC), value)  # type: ignore[arg-type]
    if options is not None:
        assert check_options(options, SPEC) == options
        assert all(isinstance(v, str) for v in options.values())


@settings(max_examples=300, deadline=None)
@given(st.one_of(anything, st.builds(lambda a, b: f"/{a}/{b}",
                                     st.sampled_from(["run/netns", "proc/12", "proc", "..", ""]),
                                     anything)))
def test_container_references(value: str) -> None:
    try:
        name = container.endpoint_name(value)
    except InvalidInput:
        return
    assert check_name(name, "endpoint name") == name
    with contextlib.suppress(InvalidInput, NotFound):
        container.resolve(value)
