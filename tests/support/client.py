"""An HTTPS client for tests: talks to the server as kube-apiserver or a user would, with a client cert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import treq
from twisted.internet import reactor as global_reactor
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from tests.support.pki import Issued


@implementer(IPolicyForHTTPS)
@attrs.frozen
class _Policy:
    ca_pem: bytes
    client: Issued | None

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        client_cert = None
        if self.client is not None:
            client_cert = PrivateCertificate.loadPEM(
                self.client.key_file.read_bytes() + self.client.cert_file.read_bytes()
            )
        return optionsForClientTLS(
            hostname.decode(), trustRoot=Certificate.loadPEM(self.ca_pem), clientCertificate=client_cert
        )


@attrs.frozen
class Response:
    code: int
    headers: dict[str, list[str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@attrs.define
class ApiClient:
    base_url: str
    ca_file: str
    client: Issued | None = None
    reactor: Any = global_reactor
    _pool: HTTPConnectionPool | None = None

    def as_user(self, client: Issued | None) -> ApiClient:
        return ApiClient(self.base_url, self.ca_file, client, self.reactor)

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str | list[str]] | None = None,
        body: bytes | dict[str, Any] | None = None,
    ) -> Response:
        if self._pool is None:
            self._pool = HTTPConnectionPool(self.reactor, persistent=False)
        policy = _Policy(Path(self.ca_file).read_bytes(), self.client)  # noqa: ASYNC240 - a small local file
        agent = Agent(self.reactor, contextFactory=policy, pool=self._pool)
        http = treq.client.HTTPClient(agent)
        send_headers: dict[bytes | str, list[bytes | str]] = {}
        for key, value in (headers or {}).items():
            send_headers[key] = [*value] if isinstance(value, list) else [value]
        data = body
        if isinstance(body, dict):
            data = json.dumps(body).encode()
            send_headers.setdefault("Content-Type", ["application/json"])
        response = await http.request(method, self.base_url + path, headers=send_headers, data=data)
        content = await treq.content(response)
        raw = {k.decode().lower(): [v.decode() for v in vs] for k, vs in response.headers.getAllRawHeaders()}
        return Response(response.code, raw, content)

    async def get(self, path: str, **kwargs: Any) -> Response:
        return await self.request("GET", path, **kwargs)

    async def delete(self, path: str, **kwargs: Any) -> Response:
        return await self.request("DELETE", path, **kwargs)
