"""The OpenAPI v2 document as protobuf (gnostic's ``openapi.v2.Document``), as kube-apiserver serves it.

kubectl 1.27 and 1.28 ask ``/openapi/v2`` for ``application/com.github.proto-openapi.spec.v2@v1.0+protobuf``
only (``kubectl explain``, and client-side validation before ``create``): a JSON-only server leaves them
with 406 and a confusing error. The wire format is plain protobuf; the messages and field numbers are
those of gnostic's OpenAPIv2.proto. Vendor extensions, defaults and enum values are ``Any`` messages
carrying YAML text (JSON is YAML). Only the parts of OpenAPI v2 this server's document uses are mapped;
anything else fails loudly when the document is built at import, never silently.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from typing import Any

# What clients ask for (the "@" spelling is what kubectl sends), and what is answered: Go's mime package
# cannot parse "@", so kube-apiserver answers with the dotted spelling, and so does this server.
MEDIA_TYPES = (
    "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
)
CONTENT_TYPE = MEDIA_TYPES[1]

_VARINT, _FIXED64, _BYTES = 0, 1, 2


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, _BYTES) + _varint(len(data)) + data


def _string(field: int, value: Any) -> bytes:
    text = str(value)
    return _bytes(field, text.encode()) if text else b""


def _bool(field: int, value: Any) -> bytes:
    return _key(field, _VARINT) + b"\x01" if value else b""


def _int(field: int, value: Any) -> bytes:
    return _key(field, _VARINT) + _varint(int(value)) if value else b""


def _double(field: int, value: Any) -> bytes:
    return _key(field, _FIXED64) + struct.pack("<d", float(value)) if value else b""


def _any(value: Any) -> bytes:
    # openapi.v2.Any: field 2 is the value as YAML.
    return _string(2, json.dumps(value, separators=(",", ":")))


def _named(field: int, name: str, value: bytes) -> bytes:
    return _bytes(field, _string(1, name) + _bytes(2, value))


Encoder = Callable[[Mapping[str, Any]], bytes]
# A field: (number, how to encode one value); "repeated" entries encode every element of a list.
Fields = dict[str, tuple[int, str, Any]]


def _message(fields: Fields, extensions: int | None) -> Encoder:
    def encode(obj: Mapping[str, Any]) -> bytes:
        out = bytearray()
        for key, value in obj.items():
            if key.startswith("x-") and extensions is not None:
                out += _named(extensions, key, _any(value))
                continue
            if key not in fields:
                raise ValueError(f"OpenAPI v2 field {key!r} has no protobuf mapping here")
            number, kind, inner = fields[key]
            values = value if kind.startswith("repeated") else [value]
            for item in values:
                out += _encode_field(number, kind.removeprefix("repeated "), inner, item)
        return bytes(out)

    return encode


def _encode_field(number: int, kind: str, inner: Any, value: Any) -> bytes:
    if kind == "string":
        return _string(number, value)
    if kind == "bool":
        return _bool(number, value)
    if kind == "int":
        return _int(number, value)
    if kind == "double":
        return _double(number, value)
    if kind == "any":
        return _bytes(number, _any(value))
    if kind == "message":
        return _bytes(number, inner()(value))
    raise AssertionError(kind)


def _schema(obj: Mapping[str, Any]) -> bytes:
    out = bytearray()
    for key, value in obj.items():
        if key == "type":
            types = value if isinstance(value, list) else [value]
            out += _bytes(22, b"".join(_string(1, t) for t in types))
        elif key == "items":
            schemas = value if isinstance(value, list) else [value]
            out += _bytes(23, b"".join(_bytes(1, _schema(s)) for s in schemas))
        elif key == "properties":
            out += _bytes(25, b"".join(_named(1, name, _schema(s)) for name, s in value.items()))
        elif key == "additionalProperties":
            item = (
                _bytes(1, _schema(value))
                if isinstance(value, Mapping)
                else _key(2, _VARINT) + (b"\x01" if value else b"\x00")
            )
            out += _bytes(21, item)
        else:
            out += _SCHEMA(key, value)
    return bytes(out)


def _schema_field(fields: Fields, extensions: int) -> Callable[[str, Any], bytes]:
    simple = _message(fields, extensions)
    return lambda key, value: simple({key: value})


_SCHEMA = _schema_field(
    {
        "$ref": (1, "string", None),
        "format": (2, "string", None),
        "title": (3, "string", None),
        "description": (4, "string", None),
        "default": (5, "any", None),
        "multipleOf": (6, "double", None),
        "maximum": (7, "double", None),
        "exclusiveMaximum": (8, "bool", None),
        "minimum": (9, "double", None),
        "exclusiveMinimum": (10, "bool", None),
        "maxLength": (11, "int", None),
        "minLength": (12, "int", None),
        "pattern": (13, "string", None),
        "maxItems": (14, "int", None),
        "minItems": (15, "int", None),
        "uniqueItems": (16, "bool", None),
        "maxProperties": (17, "int", None),
        "minProperties": (18, "int", None),
        "required": (19, "repeated string", None),
        "enum": (20, "repeated any", None),
        "allOf": (24, "repeated message", lambda: _schema),
        "discriminator": (26, "string", None),
        "readOnly": (27, "bool", None),
        "example": (30, "any", None),
    },
    31,
)

# Query, path and header parameters share these fields, numbered differently per kind.
_QUERY = _message(
    {
        "required": (1, "bool", None),
        "in": (2, "string", None),
        "description": (3, "string", None),
        "name": (4, "string", None),
        "allowEmptyValue": (5, "bool", None),
        "type": (6, "string", None),
        "format": (7, "string", None),
        "collectionFormat": (9, "string", None),
        "default": (10, "any", None),
        "uniqueItems": (20, "bool", None),
        "enum": (21, "repeated any", None),
    },
    23,
)
_PATH_OR_HEADER = _message(
    {
        "required": (1, "bool", None),
        "in": (2, "string", None),
        "description": (3, "string", None),
        "name": (4, "string", None),
        "type": (5, "string", None),
        "format": (6, "string", None),
        "collectionFormat": (8, "string", None),
        "default": (9, "any", None),
        "uniqueItems": (19, "bool", None),
        "enum": (20, "repeated any", None),
    },
    22,
)
_BODY = _message(
    {
        "description": (1, "string", None),
        "name": (2, "string", None),
        "in": (3, "string", None),
        "required": (4, "bool", None),
        "schema": (5, "message", lambda: _schema),
    },
    6,
)
_NON_BODY = {"header": (1, _PATH_OR_HEADER), "query": (3, _QUERY), "path": (4, _PATH_OR_HEADER)}


def _parameters_item(obj: Mapping[str, Any]) -> bytes:
    if "$ref" in obj:
        return _bytes(2, _string(1, obj["$ref"]) + _string(2, obj.get("description", "")))
    where = obj.get("in")
    if where == "body":
        parameter = _bytes(1, _BODY(obj))
    elif where in _NON_BODY:
        number, encode = _NON_BODY[where]
        parameter = _bytes(2, _bytes(number, encode(obj)))
    else:
        raise ValueError(f"OpenAPI v2 parameter location {where!r} has no protobuf mapping here")
    return _bytes(1, parameter)


def _responses(obj: Mapping[str, Any]) -> bytes:
    out = bytearray()
    for code, response in obj.items():
        if code.startswith("x-"):
            out += _named(2, code, _any(response))
            continue
        if "$ref" in response:
            value = _bytes(2, _string(1, response["$ref"]))
        else:
            body = _string(1, response.get("description", ""))
            if "schema" in response:
                body += _bytes(2, _bytes(1, _schema(response["schema"])))
            value = _bytes(1, body)
        out += _named(1, code, value)
    return bytes(out)


_OPERATION = _message(
    {
        "tags": (1, "repeated string", None),
        "summary": (2, "string", None),
        "description": (3, "string", None),
        "operationId": (5, "string", None),
        "produces": (6, "repeated string", None),
        "consumes": (7, "repeated string", None),
        "parameters": (8, "repeated message", lambda: _parameters_item),
        "responses": (9, "message", lambda: _responses),
        "schemes": (10, "repeated string", None),
        "deprecated": (11, "bool", None),
    },
    13,
)
_PATH_ITEM = _message(
    {
        "$ref": (1, "string", None),
        "get": (2, "message", lambda: _OPERATION),
        "put": (3, "message", lambda: _OPERATION),
        "post": (4, "message", lambda: _OPERATION),
        "delete": (5, "message", lambda: _OPERATION),
        "options": (6, "message", lambda: _OPERATION),
        "head": (7, "message", lambda: _OPERATION),
        "patch": (8, "message", lambda: _OPERATION),
        "parameters": (9, "repeated message", lambda: _parameters_item),
    },
    10,
)


def _paths(obj: Mapping[str, Any]) -> bytes:
    out = bytearray()
    for path, item in obj.items():
        out += _named(1, path, _any(item)) if path.startswith("x-") else _named(2, path, _PATH_ITEM(item))
    return bytes(out)


def _definitions(obj: Mapping[str, Any]) -> bytes:
    return b"".join(_named(1, name, _schema(schema)) for name, schema in obj.items())


_INFO = _message(
    {"title": (1, "string", None), "version": (2, "string", None), "description": (3, "string", None)}, 7
)
_DOCUMENT = _message(
    {
        "swagger": (1, "string", None),
        "info": (2, "message", lambda: _INFO),
        "host": (3, "string", None),
        "basePath": (4, "string", None),
        "schemes": (5, "repeated string", None),
        "consumes": (6, "repeated string", None),
        "produces": (7, "repeated string", None),
        "paths": (8, "message", lambda: _paths),
        "definitions": (9, "message", lambda: _definitions),
    },
    16,
)


def encode_document(document: Mapping[str, Any]) -> bytes:
    """``document`` (OpenAPI v2 as JSON) as a serialized ``openapi.v2.Document``."""
    return _DOCUMENT(document)
