"""The file watcher: what it logs of the files it re-reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent

from payloadtags.logs import klog_record
from payloadtags.reloader import FileWatcher
from payloadtags.tls import ServingCertificate
from tests.support.logcapture import collected_logs

PERIOD = 10.0


def write_pair(cert_file: Path, key_file: Path, pair: ServingCertificate) -> None:
    certificate, key = pair.pem()
    cert_file.write_bytes(certificate)
    key_file.write_bytes(key)


def serving_watcher(clock: Clock, cert_file: str, key_file: str) -> FileWatcher:
    """The watcher the server makes for --tls-cert-file and --tls-private-key-file."""

    def reload() -> None:
        ServingCertificate.from_files(cert_file, key_file)

    watcher = FileWatcher(clock, [cert_file, key_file], reload, "serving certificate", PERIOD)
    watcher.start()
    return watcher


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://al1ce:s3cret@r", "https://<redacted>@r"),
        ("https://al1ce:s3/cret@r", "https://<redacted>@r"),
        ("al1ce:s3cret@r", "<redacted>@r"),
        # review r10cfg L3: an at sign typed full-width, which NFKC makes '@'.
        ("https://al1ce:s3cret\uff20r", "https://<redacted>\uff20r"),
    ],
    ids=["url", "slash-in-password", "no-scheme", "full-width-at"],
)
def test_a_url_given_to_a_watched_file_flag_is_logged_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, redacted: str
) -> None:
    # A URL that took a file flag's value names a file under the working directory
    # (https:/al1ce:s3cret@r/tls.crt); the start logs it redacted (startup's _logged), and so must the
    # watcher that re-reads it, in its own words and in the error it quotes, text and JSON alike.
    monkeypatch.chdir(tmp_path)
    cert_file, key_file = f"{url}/tls.crt", f"{url}.key"  # the key's own name holds the password
    Path(cert_file).parent.mkdir(parents=True)
    write_pair(Path(cert_file), Path(key_file), ServingCertificate.self_signed())
    clock = Clock()
    watcher = serving_watcher(clock, cert_file, key_file)
    with collected_logs() as events:
        Path(cert_file).write_text("not a certificate")
        clock.advance(PERIOD)
        write_pair(Path(cert_file), Path("other.key"), ServingCertificate.self_signed())
        clock.advance(PERIOD)
        write_pair(Path(cert_file), Path(key_file), ServingCertificate.self_signed())
        clock.advance(PERIOD)
    watcher.stop()
    lines = [formatEvent(event) for event in events]
    shown = "\n".join(lines + [json.dumps(klog_record(event)) for event in events])
    assert "al1ce" not in shown and "cret" not in shown, shown
    redacted_cert, redacted_key = f"{redacted}/tls.crt", f"{redacted}.key"
    prefix = f"serving certificate: cannot load the changed files tls.crt, <redacted>{redacted[-2:]}.key: "
    assert lines == [
        f"{prefix}--tls-cert-file {redacted_cert}: not a PEM certificate bundle (cannot parse it); "
        "keeping the previous ones",
        f"{prefix}--tls-private-key-file {redacted_key} does not match the certificate in --tls-cert-file "
        f"{redacted_cert}; keeping the previous ones",
        f"serving certificate: reloaded {redacted_cert}, {redacted_key}",
    ]


def test_a_path_without_an_at_is_logged_as_given(tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(cert_file, key_file, ServingCertificate.self_signed())
    clock = Clock()
    watcher = serving_watcher(clock, str(cert_file), str(key_file))
    with collected_logs() as events:
        cert_file.write_text("not a certificate")
        clock.advance(PERIOD)
        write_pair(cert_file, key_file, ServingCertificate.self_signed())
        clock.advance(PERIOD)
    watcher.stop()
    assert [formatEvent(event) for event in events] == [
        f"serving certificate: cannot load the changed files tls.crt, tls.key: --tls-cert-file {cert_file}: "
        "not a PEM certificate bundle (cannot parse it); keeping the previous ones",
        f"serving certificate: reloaded {cert_file}, {key_file}",
    ]


def test_a_path_inside_another_does_not_leave_the_longer_ones_user_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key's path holds the certificate's: redacted first, the shorter would leave "al1ce:" standing
    # before its "<redacted>", and the longer one would no longer be found.
    monkeypatch.chdir(tmp_path)
    cert_file, key_file = "s3cret@r.crt", "al1ce:s3cret@r.crt.key"
    write_pair(Path(cert_file), Path(key_file), ServingCertificate.self_signed())
    clock = Clock()
    watcher = serving_watcher(clock, cert_file, key_file)
    with collected_logs() as events:
        write_pair(Path(cert_file), Path("other.key"), ServingCertificate.self_signed())
        clock.advance(PERIOD)
    watcher.stop()
    assert [formatEvent(event) for event in events] == [
        "serving certificate: cannot load the changed files <redacted>@r.crt, <redacted>@r.crt.key: "
        "--tls-private-key-file <redacted>@r.crt.key does not match the certificate in --tls-cert-file "
        "<redacted>@r.crt; keeping the previous ones"
    ]


def _said(events: list[dict[str, Any]], level: str) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"].name == level]


def test_a_broken_update_is_logged_once_not_every_period(tmp_path: Path) -> None:
    # r1tls L2: the same broken content is not tried (and logged) again every period.
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(cert_file, key_file, ServingCertificate.self_signed())
    clock = Clock()
    with collected_logs() as events:
        serving_watcher(clock, str(cert_file), str(key_file))
        cert_file.write_text("not a certificate")
        for _ in range(3):
            clock.advance(PERIOD)
    assert len(_said(events, "error")) == 1


@pytest.mark.parametrize("how", ["deleted", "unreadable"])
def test_a_file_that_cannot_be_read_is_logged_once_per_episode(tmp_path: Path, how: str) -> None:
    # r1tls L1: docs/configuration.md says a broken update keeps the old pair and is logged; a key file
    # deleted, or made unreadable (a mounted Secret's mode or owner changed), was kept silently for ever.
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    write_pair(cert_file, key_file, ServingCertificate.self_signed())
    key = key_file.read_bytes()
    clock = Clock()
    with collected_logs() as events:
        serving_watcher(clock, str(cert_file), str(key_file))
        for episode in range(2):
            key_file.unlink()
            if how == "unreadable":
                key_file.mkdir()  # open() fails (EISDIR) as with EACCES, whoever runs the test
            for _ in range(3):
                clock.advance(PERIOD)
            warnings = _said(events, "warn")
            assert len(warnings) == episode + 1
            assert str(key_file) in warnings[-1]
            assert "keeping the previous ones" in warnings[-1]
            if how == "unreadable":
                key_file.rmdir()
            key_file.write_bytes(key)
            clock.advance(PERIOD)
            assert len(_said(events, "info")) == episode + 1  # can read it again; nothing else changed
    assert not _said(events, "error")
