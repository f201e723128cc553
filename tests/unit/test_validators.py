"""The shared checks and decoders of validators.py that no option record's tests cover."""

from __future__ import annotations

import base64
import binascii
import os
import sys

import pytest

from payloadtags.validators import (
    GO_SPACE,
    cut_end_redacted,
    go_trim_space,
    paths_redacted,
    read_file,
    unpadded_urlsafe_b64decode,
    without_line_ends,
    without_userinfo,
)


def test_go_space_is_pythons_white_space_but_for_the_four_separators_go_keeps() -> None:
    # Go's unicode.IsSpace (strings.TrimSpace, as client-go reads a tokenFile) leaves U+001C-U+001F out.
    python = {chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()}
    assert set(GO_SPACE) == python - {"\x1c", "\x1d", "\x1e", "\x1f"}
    assert go_trim_space("\u3000\x0b t\x1co\x85k\x1f\xa0\n") == "t\x1co\x85k\x1f"


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


@pytest.mark.parametrize(
    ("text", "decoded"),
    [("AB==", b"\x00"), ("AB=", b"\x00"), ("a+/b", b"k\xef\xdb"), ("AB!CD", b"\x00\x10\x83"), ("!!!!", b"")],
)
def test_unpadded_urlsafe_base64_takes_what_its_docstring_says_go_refuses(text: str, decoded: bytes) -> None:
    # Padding, the standard alphabet, characters dropped: what a caller checks first if it must refuse them
    # (report-r2c N2: the docstring named one failure and none of these).
    assert unpadded_urlsafe_b64decode(text) == decoded


@pytest.mark.parametrize("text", ["A", "ABCDE", "AB!", "ABC!", "AB=C"])
def test_unpadded_urlsafe_base64_that_is_no_whole_base64_once_dropped_is_a_binascii_error(text: str) -> None:
    with pytest.raises(binascii.Error):
        unpadded_urlsafe_b64decode(text)


def test_unpadded_urlsafe_base64_that_is_not_ascii_is_a_plain_value_error() -> None:
    # Not a binascii.Error: `except binascii.Error` (schema1's _unb64) lets it through as the ValueError
    # its callers expect.
    with pytest.raises(ValueError) as raised:
        unpadded_urlsafe_b64decode("é")
    assert not isinstance(raised.value, binascii.Error)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://al1ce:s3//cret@reg.example", "https://<redacted>@reg.example"),
        # review r2f F1: without a scheme, a "//" in the password is not where the authority starts.
        ("al1ce:s3//cret@reg.example", "<redacted>@reg.example"),
        ("al1ce:s3cret@reg.example:5000", "<redacted>@reg.example:5000"),
        # A user name that looks like a scheme, and a base64 password that begins with "//".
        ("al1ce://8Acret@reg.example", "<redacted>@reg.example"),
        ("HTTPS://al1ce:s3cret@reg.example", "HTTPS://<redacted>@reg.example"),
        ("//al1ce:s3cret@reg.example", "//<redacted>@reg.example"),
        ("https://reg.example/a//b", "https://reg.example/a//b"),
    ],
)
def test_without_userinfo_redacts_all_of_a_password_holding_slashes(url, shown):
    assert without_userinfo(url) == shown


def test_paths_redacted_redacts_each_path_as_given_or_quoted_longest_first_and_nothing_else() -> None:
    # review r11misc N1: the one helper behind cli's refusals, the file watcher and the token source. An
    # OSError repeats its filename quoted (a tab escaped); a path inside a longer one is replaced after
    # it; an end of a path (a user "alice@corp" beside /home/alice@corp) is not a path.
    token, kubeconfig = "/w/https:/al1ce:s3\tcret@r/token", "/home/alice@corp/kc"
    message = f'{kubeconfig} user "alice@corp": {token}: {OSError(2, "No such file", token)}'
    assert paths_redacted(message, [kubeconfig, "/w/https:/al1ce:s3\tcret@r", token, "/no/at"]) == (
        '<redacted>@corp/kc user "alice@corp": <redacted>@r/token: '
        "[Errno 2] No such file: '<redacted>@r/token'"
    )
    assert paths_redacted("al1ce:s3cret@r.key", ["s3cret@r", "al1ce:s3cret@r.key"]) == "<redacted>@r.key"


def test_cut_end_redacted_redacts_only_a_start_of_a_path_with_an_at_sign_at_the_texts_end() -> None:
    # Beside review r13cfg F1: a plugin's stderr, held to its first 4 KiB, may end inside a folder that
    # paths_redacted then does not find whole; the longest such end goes, as given or quoted.
    folder = "/w/https:/al1ce:s3\tcret@r"
    assert cut_end_redacted("failed: /w/https:/al1ce:s3", [folder]) == "failed: <redacted>"
    assert cut_end_redacted("failed: '/w/https:/al1ce:s3\\tc", [folder]) == "failed: '<redacted>"
    assert cut_end_redacted("failed: /w/https:/al1ce:s3", ["/w/https:/al1ce:s3cret"]) == (
        "failed: /w/https:/al1ce:s3"  # no '@': nothing to redact
    )
    assert cut_end_redacted("failed: /x/y", [folder]) == "failed: /x/y"
    assert cut_end_redacted("", [folder]) == ""


def test_the_bound_stops_the_read_short_of_the_end(tmp_path):
    # r2cli T1: reading a file whole, then comparing its length with the bound, passed every test.
    # A pipe shows how much was read: what read_file left is still in it (a pipe holds 64 KiB on
    # Linux; read_file's own buffer takes at most 8 KiB past the bound).
    read_end, write_end = os.pipe()
    os.write(write_end, b"x" * (48 * 1024))
    os.close(write_end)
    try:
        with pytest.raises(OSError, match="larger than 10 bytes"):
            read_file(f"/dev/fd/{read_end}", limit=10)
        assert len(os.read(read_end, 64 * 1024)) > 32 * 1024
    finally:
        os.close(read_end)


def test_a_pipe_is_read_and_an_unwritten_one_refused(tmp_path):
    # r2cli L1: `--registry-password-file=<(pass show x)` is a pipe, which kube-apiserver reads; a named
    # pipe without a writer is refused at once rather than waited on (r1cli L3) or taken as empty.
    read_end, write_end = os.pipe()
    os.write(write_end, b"s3cr3t\n")
    os.close(write_end)
    try:
        assert read_file(f"/dev/fd/{read_end}") == b"s3cr3t\n"
    finally:
        os.close(read_end)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="a pipe with nothing written to it"):
        read_file(fifo)
    with pytest.raises(IsADirectoryError):
        read_file(tmp_path)


def test_a_file_larger_than_the_bound_is_refused_unread(tmp_path):
    # r1cli L3: a file flag's file is read at most to a bound.
    big = tmp_path / "big"
    big.write_bytes(b"x" * 11)
    assert read_file(big, limit=11) == b"x" * 11
    with pytest.raises(OSError, match="larger than 10 bytes"):
        read_file(big, limit=10)
