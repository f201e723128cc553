"""Label and field selectors, as the API server parses and applies them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_KEY = rf"(?:[a-z0-9](?:[-a-z0-9.]*[a-z0-9])?/)?{_NAME}"
_VALUE = rf"(?:{_NAME})?"
_EQUALITY = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^()]*)\)$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")

FIELD_KEYS = ("metadata.name", "metadata.namespace")


class SelectorError(ValueError):
    """A selector that does not parse; the API server answers 400 BadRequest."""


@attrs.frozen
class _Requirement:
    key: str
    test: Callable[[str | None], bool]


def _equals(value: str) -> Callable[[str | None], bool]:
    return lambda v: v == value


def _differs(value: str) -> Callable[[str | None], bool]:
    return lambda v: v != value


def _member(values: set[str]) -> Callable[[str | None], bool]:
    return lambda v: v in values


def _not_member(values: set[str]) -> Callable[[str | None], bool]:
    return lambda v: v not in values


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


@attrs.frozen
class LabelSelector:
    """``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``, comma = AND."""

    requirements: tuple[_Requirement, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text or not text.strip():
            return cls()
        requirements: list[_Requirement] = []
        for part in _split_top_level(text):
            if m := _EQUALITY.match(part):
                key, op, value = m.groups()
                if op == "!=":
                    requirements.append(_Requirement(key, _differs(value)))
                else:
                    requirements.append(_Requirement(key, _equals(value)))
            elif m := _SET.match(part):
                key, op, raw = m.groups()
                values: set[str] = {v.strip() for v in raw.split(",")} if raw.strip() else set()
                if not values or any(not re.fullmatch(_VALUE, v) for v in values):
                    raise SelectorError(f"unable to parse requirement: invalid values in {part!r}")
                if op == "in":
                    requirements.append(_Requirement(key, _member(values)))
                else:
                    requirements.append(_Requirement(key, _not_member(values)))
            elif m := _EXISTS.match(part):
                negate, key = m.groups()
                if negate:
                    requirements.append(_Requirement(key, lambda v: v is None))
                else:
                    requirements.append(_Requirement(key, lambda v: v is not None))
            else:
                raise SelectorError(f"unable to parse requirement: {part!r}")
        return cls(tuple(requirements))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.test(labels.get(r.key)) for r in self.requirements)


@attrs.frozen
class FieldSelector:
    """``metadata.name`` and ``metadata.namespace`` with ``=``, ``==`` and ``!=``."""

    terms: tuple[tuple[str, bool, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> FieldSelector:
        if not text or not text.strip():
            return cls()
        terms = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*", part)
            if m is None:
                raise SelectorError(f"invalid field selector: {part!r}")
            key, op, value = m.groups()
            if key not in FIELD_KEYS:
                known = ", ".join(f'"{k}"' for k in FIELD_KEYS)
                raise SelectorError(f'"{key}" is not a known field selector: only {known}')
            terms.append((key, op != "!=", value))
        return cls(tuple(terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        fields = {"metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", "")}
        return all((fields[key] == value) == equal for key, equal, value in self.terms)
