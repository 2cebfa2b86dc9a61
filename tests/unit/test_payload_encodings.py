"""The two encodings of a gRPC payload field (SPEC §5): UTF-8 JSON bytes and an encoded
`google.protobuf.Struct`, told apart safely by `saga_grpc.service.decode_payload`."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import struct_pb2
from hypothesis import given
from hypothesis import strategies as st

from saga.errors import ValidationError
from saga_grpc.service import decode_payload, encode_struct, struct_payload

# JSON values a Struct can carry exactly: numbers are doubles, so integers within 2^53.
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    text,
)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=20,
)
objects = st.dictionaries(text, values, max_size=6)


def _as_json_reads_it(value: Any) -> Any:
    """What a JSON reader makes of a Struct's doubles: whole numbers are integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _as_json_reads_it(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_json_reads_it(v) for v in value]
    return value


@given(objects)
def test_both_encodings_of_an_object_decode_to_it(payload: dict[str, Any]) -> None:
    """Any JSON object, sent as JSON bytes or as an encoded Struct, decodes to the same value."""
    assert decode_payload(json.dumps(payload).encode()) == payload
    assert decode_payload(encode_struct(payload)) == _as_json_reads_it(payload)


@given(objects.filter(bool))
def test_no_struct_encoding_is_a_json_text(payload: dict[str, Any]) -> None:
    """A non-empty Struct always holds the map-entry value tag 0x12, a byte no valid JSON text
    contains, so trying JSON first can never misread a Struct."""
    raw = encode_struct(payload)
    assert b"\x12" in raw
    with pytest.raises(ValueError):
        json.loads(raw.decode("utf-8", "replace"))


def test_a_json_text_that_is_also_a_lax_struct_is_read_as_json() -> None:
    """Some JSON texts parse as a Struct too, but only as a lax one (an entry whose value has
    no kind, an unknown field): decoding reads them as the JSON they are, and the strict
    Struct check refuses them."""
    raw = b'\n\r\n\t{"abc":1}  '
    struct_pb2.Struct.FromString(raw)  # parses without complaint
    assert json.loads(raw) == {"abc": 1}
    assert decode_payload(raw) == {"abc": 1}
    assert struct_payload(raw) is None


def test_empty_bytes_are_an_empty_object_in_both_encodings() -> None:
    """b"" is {} as JSON bytes (absent) and as a Struct (an empty Struct encodes to nothing)."""
    assert encode_struct({}) == b""
    assert decode_payload(b"") == {}


@pytest.mark.parametrize(
    "raw",
    [
        b"\n\x03\n\x01a",  # a map entry without its value
        b"\n\x05\n\x01a\x12\x00",  # a Value without a kind
        encode_struct({"a": 1}) + b"\x18\x01",  # an unknown field
        b"\n\x07\n\x01a\x12\x02 ",  # truncated
        b"\x00\x01garbage",
    ],
)
def test_neither_a_json_object_nor_a_strict_struct_is_refused(raw: bytes) -> None:
    """Anything else is a ValidationError naming payload."""
    with pytest.raises(ValidationError, match="^payload: must be UTF-8 encoded JSON"):
        decode_payload(raw)
