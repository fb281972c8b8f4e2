"""Protocol fuzzing: hostile requests of every shape, and the service must answer each one
and change nothing unless a request succeeded.

Random bytes, random msgpack values, requests with real method names and hostile
parameters (wrong types, huge numbers, escapes, idsets of billions of ranks), deep
nesting, and msgpack headers declaring gigabytes that never come. After every batch:
every message got a reply (none EINTERNAL), and the units, drains and config are what
they were, unless a reply in the batch was a successful act.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hkservice.auth import METHOD_ACCESS, Access
from hkservice.protocol import pack, unpack
from tests.conftest import RunningService, ServiceFactory

METHODS = [*METHOD_ACCESS, "housekeeping.explode", "", "resource.drain\x00", "ÿ" * 300]
PARAM_NAMES = ["jobid", "ranks", "userid", "signum", "all", "reason", "rank", "tail", "limit"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(["0-3", "3,1", "0-4294967295", "node0", "\x1b[2J", "1" * 500, "-1"])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    message: dict[Any, Any] = {
        "v": draw(st.sampled_from([1, 1, 1, True, 1.0, "1", 2, None, [1]])),
        "method": draw(st.sampled_from(METHODS) | values),
    }
    if draw(st.booleans()):
        message["id"] = draw(values)
    if draw(st.booleans()):
        message["user"] = draw(
            st.sampled_from(["alice", "", "a b", "\x1b]0;x\x07", "x" * 65]) | values
        )
    params = draw(st.dictionaries(st.sampled_from(PARAM_NAMES), values, max_size=5))
    message["params"] = params if draw(st.integers(0, 9)) else draw(values)
    return msgpack.packb(message, use_bin_type=True)


def nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"


@st.composite
def deep_in_a_request(draw: st.DrawFn) -> bytes:
    """A request whose one field holds lists nested up to 1,200 deep (msgpack itself
    stops at 1,024)."""
    fields = {"v": pack(1), "id": pack(1), "method": pack("housekeeping.list"), "params": pack({})}
    where = draw(st.sampled_from(["v", "id", "method", "params", "user", "extra", "param"]))
    deep = nested(draw(st.sampled_from([1, 64, 999, 1000, 1023, 1024]) | st.integers(1, 1200)))
    if where == "param":
        fields["params"] = b"\x81" + pack("jobid") + deep
    else:
        fields[where] = deep
    return bytes([0x80 | len(fields)]) + b"".join(pack(k) + v for k, v in fields.items())


# msgpack headers that declare far more than follows: array32, map32, str32, bin32, ext32.
HUGE_DECLARED = [
    b"\xdd\xff\xff\xff\xff\x01",
    b"\xdf\xff\xff\xff\xff\xa1a",
    b"\xdb\xff\xff\xff\xffabc",
    b"\xc6\xff\xff\xff\xff\x00",
    b"\xc9\xff\xff\xff\xff\x01\x00",
    b"\x81\xa6params\xdd\x7f\xff\xff\xff",
]

messages = (
    st.binary(max_size=300)
    | requests()
    | values.map(lambda v: msgpack.packb(v, use_bin_type=True))
    | st.integers(1, 3000).map(nested)
    | deep_in_a_request()
    | st.sampled_from(HUGE_DECLARED)
)


def snapshot(svc: RunningService) -> tuple[Any, ...]:
    units = svc.call("housekeeping.list")["units"]
    status = svc.call("resource.status")
    config = svc.call("service.config")
    config.pop("t_now")
    return units, status, config


@pytest.fixture
def fuzzed(hk_service: ServiceFactory) -> RunningService:
    svc = hk_service(command=["sleep", "600"])
    svc.call("housekeeping.start", {"jobid": 7, "ranks": "0-1"})
    svc.call("resource.drain", {"ranks": "3", "reason": "before the fuzz"})
    return svc


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(messages, min_size=1, max_size=8))
def test_hostile_requests_are_answered_and_change_nothing(
    fuzzed: RunningService, batch: list[bytes]
) -> None:
    before = snapshot(fuzzed)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(fuzzed.endpoint)
    acted = False
    try:
        for body in batch:
            sock.send(body)
            assert sock.poll(5000), f"no reply to {body[:80]!r}"
            reply = unpack(sock.recv())
            assert isinstance(reply, dict) and reply.get("v") == 1
            if "error" in reply:
                assert reply["error"]["code"] != "EINTERNAL", (body[:200], reply)
            else:
                method = unpack(body).get("method")
                acted |= METHOD_ACCESS.get(method, Access.ACT) is not Access.READ
    finally:
        sock.close()
    after = snapshot(fuzzed)
    if not acted:
        assert after == before
    assert fuzzed.proc is not None and fuzzed.proc.poll() is None
    assert "Traceback" not in fuzzed.log()
