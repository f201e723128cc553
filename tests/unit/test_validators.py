"""The shared checks and decoders of validators.py that no option record's tests cover."""

from __future__ import annotations

import base64
import binascii

import pytest

from payloadtags.validators import unpadded_urlsafe_b64decode, without_line_ends


def test_line_ends_are_taken_out_wherever_they_are() -> None:
    assert without_line_ends("\r\nab\nc\rd\r\n") == "abcd"
    assert without_line_ends("abc") == "abc"
    assert without_line_ends("") == ""


@pytest.mark.parametrize("data", [b"", b"a", b"ab", b"abc", b"\xfb\xff\xfe", bytes(range(256))])
def test_unpadded_urlsafe_base64_decodes_what_go_raw_url_encoding_writes(data: bytes) -> None:
    # Go's RawURLEncoding: the URL-safe alphabet ("-", "_"), no "=" padding, whatever the length.
    text = base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
    assert "=" not in text
    assert unpadded_urlsafe_b64decode(text) == data


def test_unpadded_urlsafe_base64_of_a_length_no_padding_makes_whole_is_an_error() -> None:
    with pytest.raises(binascii.Error):
        unpadded_urlsafe_b64decode("abcde")
