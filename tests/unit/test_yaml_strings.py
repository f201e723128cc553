"""A string in a YAML answer is read back as that string by every client: by kubectl and other Go tools
(sigs.k8s.io/yaml over go-yaml, whose resolver reads `1e3`, `0o755`, `08` and `y` as numbers and
booleans), by YAML 1.2 parsers and by PyYAML (YAML 1.1). Each string is checked through the real
kubectl and through PyYAML against the compact JSON answer, as a value and as a key.

See docs/api.md, "Content negotiation".
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payloadtags.api import formats
from payloadtags.api.negotiation import negotiate
from tests.support.kubectl import read_yaml_locally

YAML = negotiate("application/yaml", collection=False)
JSON = negotiate("application/json", collection=False)
WORDS = ("y", "n", "yes", "no", "on", "off", "true", "false", "null", "nan", "inf", "infinity")
# YAML 1.1, YAML 1.2 and Go integers in every base, with signs and underscores; floats in every exponent
# form, the special values and Go's ParseFloat spellings; sexagesimals.
NUMBERS = tuple(
    """0 1 +1 -1 08 09 0789 0755 -0755 0o755 0O17 0o0 0x1F 0X1f -0x1F 0b1 0B101 +0b1 1_000 0b1_0 0x_1F
    1e3 1E3 1e-3 1e+3 1.5e3 0e0 1. .5 -.5 +.5 1.0 6.8523015e+5 685.230_15e+03 0x1p-2 1_0.5 1e e3
    .inf -.inf +.inf .Inf .INF -.Inf .nan .NaN .NAN +inf -Infinity 190:20:30 190:20:30.15 1:2 -1:30""".split()
)
DATES = ("2024-01-01", "2002-12-14", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5", "2001-1-1")
SPACED = ("", " ", "  ", " x", "x ", "x  y", "x: y", "- x", "x #y", "? x", "x\ny", "x\ty", "\t")
SYNTAX = (
    *SPACED,
    *""":x x: x:y -x - -- --- ... #x x#y ?x &a *a !a !!str | > %x @x `x 'x' "x" {x} [x] x,y << = ~
    \\ x\\y a/b a.b a_b a-b _x .x""".split(),
)
UNICODE = ("é", "naïve", "日本", "Ω1e3", "\u2028", "\u00a0", "\ufeffx", "x\u0085y", "\U0001f600")


def _cased(word: str) -> list[str]:
    return sorted({word, word.upper(), word.capitalize(), word.swapcase(), word[:-1] + word[-1].upper()})


TRICKY = sorted(
    {cased for word in WORDS for cased in _cased(word)}
    | {
        cased
        for word in WORDS
        for cased in _cased(word)
        if len(word) > 1
        for cased in (f"{cased} ", f" {cased}")
    }
    | set(NUMBERS)
    | {f"{number}x" for number in NUMBERS}
    | set(DATES)
    | set(SYNTAX)
    | set(UNICODE)
)
# The tags an OCI registry accepts ([A-Za-z0-9_][A-Za-z0-9._-]{0,127}): the strings spec.tag and the
# Tag cell carry.
OCI_TAGS = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}", fullmatch=True)


def _document(strings: list[str]) -> dict[str, Any]:
    # Each string as a value and as a key: a misread key is seen too (sigs.k8s.io/yaml writes a number
    # or boolean key back as its own spelling, `8` or `true`).
    return {
        "apiVersion": "example.io/v1",
        "kind": "Thing",
        "metadata": {"name": "x"},
        "spec": {"values": strings, "keys": {text: index for index, text in enumerate(strings)}},
    }


def _misread(strings: list[str]) -> list[tuple[str, str, Any]]:
    document = _document(strings)
    expected = json.loads(formats.encode(document, JSON))
    text = formats.encode(document, YAML)
    wrong: list[tuple[str, str, Any]] = []
    for reader, read in (("pyyaml", yaml.safe_load(text)), ("kubectl", read_yaml_locally(text))):
        if read != expected:
            values, keys = read["spec"]["values"], read["spec"]["keys"]
            wrong += [(reader, s, v) for s, v in zip(strings, values, strict=False) if s != v]
            wrong += [(reader, "key", k) for k in sorted(set(keys) ^ set(strings))]
            wrong += [(reader, "document", read)] if not wrong else []
    return wrong


@pytest.mark.kubectl
@pytest.mark.parametrize("group", ["words", "numbers", "dates", "syntax", "unicode", "all"])
def test_tricky_strings_read_back_as_themselves(group: str) -> None:
    chosen = {
        "words": [s for s in TRICKY if s.strip().lower() in WORDS],
        "numbers": [s for s in TRICKY if s in NUMBERS or s[:-1] in NUMBERS],
        "dates": list(DATES),
        "syntax": list(SYNTAX),
        "unicode": list(UNICODE),
        "all": TRICKY,
    }[group]
    assert _misread(chosen) == []


def test_safe_strings_stay_plain() -> None:
    # Names and tags as go-yaml writes them: quoted only where a reader could take them for another type.
    text = formats.encode({"a": "v1.2.3", "b": "latest", "c": "app/b-c_d", "d": "Yes-1", "e": "1e3"}, YAML)
    assert text == b'a: v1.2.3\nb: latest\nc: app/b-c_d\nd: Yes-1\ne: "1e3"\n'


@pytest.mark.kubectl
@pytest.mark.property
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OCI_TAGS, min_size=1, max_size=60, unique=True))
def test_oci_tags_read_back_as_themselves(tags: list[str]) -> None:
    assert _misread(tags) == []


@pytest.mark.kubectl
@pytest.mark.property
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12), max_size=40))
def test_any_text_reads_back_as_itself(strings: list[str]) -> None:
    assert _misread(sorted(set(strings))) == []
