"""A request refused before its body is read is an API request served all the same (docs/metrics.md):
counted as the same request without a body is (review r1obs F2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent

from tests.support.harness import Pki
from tests.support.logcapture import collected_logs
from tests.support.raw import Target, exchange, request_bytes
from tests.support.registry_server import RegistryServer

B = "/apis/payload-registry.deckhouse.io/v1alpha1"
NAME = f"{B}/namespaces/team/payloadrepositorytags/nb2hi4bnmvrwq3z2nrqxizltoq"
BODY = b'{"kind":"DeleteOptions","apiVersion":"v1"}'
JSON = {"Content-Type": "application/json"}


def counted(exposition: str, labels: str) -> float:
    """The value of payloadtags_apiserver_requests_total{labels}, 0 when it has no series."""
    prefix = f"payloadtags_apiserver_requests_total{{{labels}}} "
    return next(
        (float(line[len(prefix) :]) for line in exposition.splitlines() if line.startswith(prefix)), 0.0
    )


async def metrics(server: Any) -> str:
    reply = await server.client(server.pki.admin).get("/metrics")
    assert reply.code == 200
    return str(reply.body.decode())


@pytest_twisted.ensureDeferred
async def test_an_unauthenticated_delete_is_counted_with_or_without_a_body(api):
    target = Target(api.running.port, str(api.pki.server_ca.cert_file))
    bare = await deferToThread(exchange, target, request_bytes("DELETE", NAME))
    with_body = await deferToThread(exchange, target, request_bytes("DELETE", NAME, JSON, BODY))
    assert bare.code == with_body.code == 401
    labels = 'code="401",resource="payloadrepositorytags",verb="delete"'
    # Before: 1.0, only the one without a body.
    assert counted(await metrics(api), labels) == 2.0


@pytest_twisted.ensureDeferred
async def test_refusals_of_bodies_are_counted_under_the_routes_labels_and_unrouted_ones_are_not(api):
    target = Target(api.running.port, str(api.pki.server_ca.cert_file))
    admin = api.pki.admin
    sent = [
        # Declared larger than --max-request-body-bytes: 413 before admission.
        (request_bytes("DELETE", NAME, {**JSON, "Content-Length": str(1 << 40)}), admin, 413),
        # A malformed ?timeout= is its 400 before authentication.
        (request_bytes("DELETE", f"{NAME}?timeout=soon", JSON, BODY), None, 400),
        # No route serves these with or without a body (404, 405 without one): not counted, and a
        # made-up method is no label.
        (request_bytes("DELETE", "/made/up", JSON, BODY), None, 401),
        (request_bytes("FROB", NAME, JSON, BODY), None, 401),
        (request_bytes("POST", "/healthz", JSON, BODY), None, 400),
    ]
    for raw, user, code in sent:
        reply = await deferToThread(exchange, target, raw, user)
        assert reply.code == code, (raw[:40], reply.code)
    exposition = await metrics(api)
    assert counted(exposition, 'code="413",resource="payloadrepositorytags",verb="delete"') == 1.0
    assert counted(exposition, 'code="400",resource="payloadrepositorytags",verb="delete"') == 1.0
    assert "frob" not in exposition
    assert counted(exposition, 'code="401",resource="",verb="delete"') == 0.0
    assert counted(exposition, 'code="400",resource="",verb="post"') == 0.0


@pytest_twisted.ensureDeferred
async def test_notifications_with_a_wrong_token_are_counted_and_said_once_per_period(
    tmp_path: Path, make_server: Any, registry: RegistryServer, pki: Pki
):
    token_file = tmp_path / "events.token"
    token_file.write_text("the-token")
    server = await make_server(registry, registry_events_token_file=str(token_file))
    target = Target(server.running.port, str(pki.server_ca.cert_file))
    wrong = {**JSON, "Authorization": "Bearer rotated-on-one-side"}
    with collected_logs() as events:
        for body in (b'{"events": []}', b"", b'{"events": []}'):  # with a body, refused at admission
            reply = await deferToThread(
                exchange, target, request_bytes("POST", "/registry/events", wrong, body)
            )
            assert reply.code == 401
    said = [formatEvent(e) for e in events if "registry notification" in e.get("log_format", "")]
    # Before: not a line, and the two with a body not counted.
    assert len(said) == 1, said
    assert said[0].startswith("registry notification from 127.0.0.1 refused: its Authorization header")
    assert "rotated-on-one-side" not in said[0]
    assert counted(await metrics(server), 'code="401",resource="",verb="post"') == 3.0
