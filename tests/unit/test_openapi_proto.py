"""The v2 document's protobuf form, read back with a generic protobuf wire decoder."""

from __future__ import annotations

import json
import struct
from typing import Any

from payloadtags.api import openapi
from payloadtags.api.openapi_proto import encode_document


def fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) pairs: ints for varints, floats for 64-bit, bytes for length-delimited."""
    out: list[tuple[int, Any]] = []
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = struct.unpack("<d", data[position : position + 8])[0], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position : position + length], position + length
        else:
            raise AssertionError(f"wire type {wire}")
        out.append((number, value))
    return out


def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, position


def named(data: bytes) -> tuple[str, bytes]:
    parts = dict(fields(data))
    return parts[1].decode(), parts[2]


def test_document_fields_definitions_and_group_version_kind() -> None:
    document = dict(fields(openapi.V2_PROTOBUF))
    assert document[1] == b"2.0"
    definitions = dict(named(entry) for number, entry in fields(document[9]) if number == 1)
    assert set(definitions) == set(openapi.V2["definitions"])
    tag = "io.deckhouse.payload-registry.v1alpha1.PayloadRepositoryTag"
    schema = fields(definitions[tag])
    extensions = dict(named(value) for number, value in schema if number == 31)
    gvk_yaml = dict(fields(extensions["x-kubernetes-group-version-kind"]))[2].decode()
    assert json.loads(gvk_yaml) == openapi.V2["definitions"][tag]["x-kubernetes-group-version-kind"]
    description = next(value for number, value in schema if number == 4).decode()
    assert description == openapi.V2["definitions"][tag]["description"]
    properties = dict(named(entry) for number, entry in fields(dict(schema)[25]) if number == 1)
    assert set(properties) == set(openapi.V2["definitions"][tag]["properties"])


def test_paths_and_their_operations() -> None:
    document = dict(fields(openapi.V2_PROTOBUF))
    paths = dict(named(entry) for number, entry in fields(document[8]) if number == 2)
    assert set(paths) == set(openapi.V2["paths"])


def test_types_items_and_scalars() -> None:
    encoded = encode_document(
        {
            "definitions": {
                "x": {
                    "type": "array",
                    "items": {"type": "integer", "format": "int64", "minimum": 1.5, "uniqueItems": True},
                    "maxItems": 300,
                }
            }
        }
    )
    _, schema = named(dict(fields(encoded))[9][2:])  # one NamedSchema inside Definitions
    parts = dict(fields(schema))
    assert dict(fields(parts[22])) == {1: b"array"}
    item = dict(fields(dict(fields(parts[23]))[1]))
    assert (item[22], item[2], item[9], item[16]) == (b"\n\x07integer", b"int64", 1.5, 1)
    assert parts[14] == 300
