"""Synchronous helpers that push content to a registry and look at it directly.

For fixtures, the demo script and benchmarks only: they block (urllib) and must never run inside the
server's reactor. A target is a URL string or any object with ``url`` and optionally ``username``,
``password`` and ``ca_file`` attributes (RegistryServer, RegistrySettings).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import random
import re
import ssl
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import attrs

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST)
ACCEPT = ", ".join(MANIFEST_TYPES)
EMPTY_JSON = b"{}"


class Target(Protocol):
    @property
    def url(self) -> str: ...


class PushError(RuntimeError):
    pass


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@attrs.frozen
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _challenge_params(header: str) -> dict[str, str]:
    # Values are quoted and may hold commas: scope="repository:a/b:pull,push".
    rest = header.split(" ", 1)[1] if " " in header else ""
    return {k.lower(): v for k, v in re.findall(r'([A-Za-z_]+)="([^"]*)"', rest)}


class Session:
    """Blocking HTTP to one registry that answers 401 challenges (Basic and Bearer token)."""

    def __init__(self, target: str | Target) -> None:
        url = target if isinstance(target, str) else target.url
        self.base = url.rstrip("/")
        self.username: str | None = getattr(target, "username", None)
        self.password: str | None = getattr(target, "password", None)
        ca_file = getattr(target, "ca_file", None)
        self._context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._authorization: dict[str, str] = {}  # scope key -> Authorization header

    def request(
        self,
        method: str,
        path_or_url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        url = path_or_url if "://" in path_or_url else self.base + path_or_url
        key = f"{method} {urllib.parse.urlsplit(url).path}"
        response = self._send(method, url, body, headers, self._authorization.get(key))
        if response.status == 401:
            authorization = self._authorize(response.header("www-authenticate") or "")
            if authorization:
                self._authorization[key] = authorization
                response = self._send(method, url, body, headers, authorization)
        return response

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str] | None,
        authorization: str | None,
    ) -> Response:
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        if authorization:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self._context) as answer:
                return Response(answer.status, _lower(answer.headers), answer.read())
        except urllib.error.HTTPError as error:
            with error:
                return Response(error.code, _lower(error.headers), error.read())

    def _basic(self) -> str | None:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _authorize(self, challenge: str) -> str | None:
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            return self._basic()
        if scheme != "bearer":
            return None
        params = _challenge_params(challenge)
        query = {"service": params.get("service", "")}
        if "scope" in params:
            query["scope"] = params["scope"]
        realm = params["realm"] + "?" + urllib.parse.urlencode(query)
        answer = self._send("GET", realm, None, None, self._basic())
        if answer.status != 200:
            raise PushError(f"token server answered {answer.status}: {answer.body[:200]!r}")
        token = json.loads(answer.body)
        bearer: str = token.get("token") or token["access_token"]
        return "Bearer " + bearer

    def expect(self, response: Response, *statuses: int, what: str) -> Response:
        if response.status not in statuses:
            raise PushError(f"{what}: HTTP {response.status}: {response.body[:300]!r}")
        return response


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _session(target: str | Target | Session) -> Session:
    return target if isinstance(target, Session) else Session(target)


# --- low level pushes -----------------------------------------------------------------------------


def push_blob(target: str | Target | Session, repository: str, data: bytes) -> dict[str, Any]:
    """Upload a blob (monolithic POST + PUT) unless present; return its descriptor fields."""
    session = _session(target)
    digest = sha256(data)
    head = session.request("HEAD", f"/v2/{repository}/blobs/{digest}")
    if head.status != 200:
        started = session.expect(
            session.request("POST", f"/v2/{repository}/blobs/uploads/"), 202, what="start upload"
        )
        location = started.header("location") or ""
        location = urllib.parse.urljoin(session.base + "/", location)
        separator = "&" if "?" in location else "?"
        session.expect(
            session.request(
                "PUT",
                f"{location}{separator}digest={urllib.parse.quote(digest)}",
                data,
                {"Content-Type": "application/octet-stream"},
            ),
            201,
            what=f"upload blob {digest}",
        )
    return {"digest": digest, "size": len(data)}


def push_manifest(
    target: str | Target | Session,
    repository: str,
    reference: str,
    manifest: bytes | Mapping[str, Any],
    media_type: str,
) -> str:
    """PUT a manifest under a tag or its digest; return the digest."""
    session = _session(target)
    body = manifest if isinstance(manifest, bytes) else canonical(manifest)
    answer = session.expect(
        session.request("PUT", f"/v2/{repository}/manifests/{reference}", body, {"Content-Type": media_type}),
        201,
        what=f"push manifest {repository}:{reference}",
    )
    digest = answer.header("docker-content-digest") or sha256(body)
    if digest != sha256(body):
        raise PushError(f"registry stored {digest}, expected {sha256(body)}")
    return digest


def push_signed_schema1(target: str | Target | Session, repository: str, tags: Sequence[str]) -> str:
    """A Docker schema 1 manifest signed as docker signed them (one layer), pushed under each tag (the
    registry needs ``compatibility.schema1.enabled``); returns the digest the registry gives it, that
    of the signed payload."""
    from payloadtags.registry.schema1 import SIGNED_SCHEMA1, sign

    session = _session(target)
    compressed, _ = _layer(f"{repository}:schema1", 0)
    layer = push_blob(session, repository, compressed)["digest"]
    v1 = json.dumps({"id": hashlib.sha256(layer.encode()).hexdigest(), "architecture": "amd64"})
    body, payload = sign(
        {
            "schemaVersion": 1,
            "name": repository,
            "tag": tags[0],
            "architecture": "amd64",
            "fsLayers": [{"blobSum": layer}],
            "history": [{"v1Compatibility": v1}],
        }
    )
    for tag in tags:
        answer = session.expect(
            session.request(
                "PUT", f"/v2/{repository}/manifests/{tag}", body, {"Content-Type": SIGNED_SCHEMA1}
            ),
            201,
            what=f"push schema 1 manifest {repository}:{tag}",
        )
        if answer.header("docker-content-digest") != sha256(payload):
            raise PushError(
                f"registry stored {answer.header('docker-content-digest')}, not {sha256(payload)}"
            )
    return sha256(payload)


def schema1_with_unsigned_layers(repository: str, tag: str) -> tuple[dict[str, Any], bytes, bytes]:
    """A signed schema 1 manifest as a registry other than distribution could serve it, with a second
    ``fsLayers`` (which json.loads takes over the first) between its signed payload and its
    signatures, where the digest does not cover it: (the signed document, its payload, the bytes)."""
    from payloadtags.registry.schema1 import sign

    document = {
        "schemaVersion": 1,
        "name": repository,
        "tag": tag,
        "fsLayers": [{"blobSum": "sha256:" + "a" * 64}],
        "history": [{"v1Compatibility": "{}"}],
    }
    body, payload = sign(document)
    at = body.index(b',\n   "signatures"')
    served = body[:at] + b',"fsLayers":[{"blobSum":"sha256:' + b"e" * 64 + b'"}]' + body[at:]
    return document, payload, served


def _layer(seed: str, index: int) -> tuple[bytes, bytes]:
    """A tiny deterministic gzipped tar with one file: (compressed, uncompressed)."""
    rng = random.Random(f"{seed}/{index}")
    content = rng.randbytes(64)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo(f"file-{index}.bin")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    uncompressed = raw.getvalue()
    return gzip.compress(uncompressed, mtime=0), uncompressed


def _image_parts(
    session: Session,
    repository: str,
    *,
    seed: str,
    layers: int,
    config_type: str,
    layer_type: str,
    architecture: str,
    labels: Mapping[str, str] | None,
) -> dict[str, Any]:
    layer_descriptors = []
    diff_ids = []
    for index in range(layers):
        compressed, uncompressed = _layer(seed, index)
        layer_descriptors.append({"mediaType": layer_type, **push_blob(session, repository, compressed)})
        diff_ids.append(sha256(uncompressed))
    config = {
        "architecture": architecture,
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Labels": dict(labels or {"seed": seed}), "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "payloadtags tests"}],
    }
    config_descriptor = {"mediaType": config_type, **push_blob(session, repository, canonical(config))}
    return {"schemaVersion": 2, "config": config_descriptor, "layers": layer_descriptors}


# --- images ---------------------------------------------------------------------------------------


def push_oci_image(
    target: str | Target | Session,
    repository: str,
    tag: str | None,
    *,
    seed: str | None = None,
    layers: int = 1,
    architecture: str = "amd64",
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """An OCI image manifest with a real image config; pushed by digest when tag is None."""
    session = _session(target)
    seed = seed if seed is not None else f"{repository}:{tag}:{architecture}"
    manifest: dict[str, Any] = {"mediaType": OCI_MANIFEST}
    manifest |= _image_parts(
        session,
        repository,
        seed=seed,
        layers=layers,
        config_type=OCI_CONFIG,
        layer_type=OCI_LAYER,
        architecture=architecture,
        labels=labels,
    )
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = canonical(manifest)
    return push_manifest(session, repository, tag or sha256(body), body, OCI_MANIFEST)


def push_docker_image(
    target: str | Target | Session,
    repository: str,
    tag: str | None,
    *,
    seed: str | None = None,
    layers: int = 1,
    architecture: str = "amd64",
    labels: Mapping[str, str] | None = None,
) -> str:
    """A Docker v2 schema2 manifest; pushed by digest when tag is None."""
    session = _session(target)
    seed = seed if seed is not None else f"docker:{repository}:{tag}:{architecture}"
    manifest = {"mediaType": DOCKER_MANIFEST}
    manifest |= _image_parts(
        session,
        repository,
        seed=seed,
        layers=layers,
        config_type=DOCKER_CONFIG,
        layer_type=DOCKER_LAYER,
        architecture=architecture,
        labels=labels,
    )
    # Docker's own tools write indented JSON; the digest must survive whatever bytes we choose.
    body = json.dumps(manifest, indent=3).encode()
    return push_manifest(session, repository, tag or sha256(body), body, DOCKER_MANIFEST)


def _push_list(
    session: Session,
    repository: str,
    tag: str | None,
    media_type: str,
    children: Sequence[tuple[str, str, str]],
    annotations: Mapping[str, str] | None,
) -> str:
    """children: (digest, media type, architecture); sizes are looked up from the registry."""
    entries = []
    for digest, child_type, architecture in children:
        fetched = get_manifest(session, repository, digest)
        if fetched is None:
            raise PushError(f"child manifest {digest} not in {repository}")
        entries.append(
            {
                "mediaType": child_type,
                "digest": digest,
                "size": len(fetched.content),
                "platform": {"architecture": architecture, "os": "linux"},
            }
        )
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = canonical(manifest)
    return push_manifest(session, repository, tag or sha256(body), body, media_type)


def push_oci_index(
    target: str | Target | Session,
    repository: str,
    tag: str | None,
    *,
    architectures: Sequence[str] = ("amd64", "arm64"),
    children: Sequence[str] | None = None,
    seed: str | None = None,
    annotations: Mapping[str, str] | None = None,
) -> str:
    """An OCI index over OCI images; children are pushed by digest unless given (digests)."""
    session = _session(target)
    seed = seed if seed is not None else f"index:{repository}:{tag}"
    if children is None:
        children = [
            push_oci_image(session, repository, None, seed=f"{seed}:{arch}", architecture=arch)
            for arch in architectures
        ]
    child_entries = [
        (d, OCI_MANIFEST, a) for d, a in zip(children, _archs(architectures, children), strict=True)
    ]
    return _push_list(session, repository, tag, OCI_INDEX, child_entries, annotations)


def push_docker_manifest_list(
    target: str | Target | Session,
    repository: str,
    tag: str | None,
    *,
    architectures: Sequence[str] = ("amd64", "arm64"),
    children: Sequence[str] | None = None,
    seed: str | None = None,
) -> str:
    """A Docker manifest list over Docker v2 images; children are pushed by digest unless given."""
    session = _session(target)
    seed = seed if seed is not None else f"list:{repository}:{tag}"
    if children is None:
        children = [
            push_docker_image(session, repository, None, seed=f"{seed}:{arch}", architecture=arch)
            for arch in architectures
        ]
    child_entries = [
        (d, DOCKER_MANIFEST, a) for d, a in zip(children, _archs(architectures, children), strict=True)
    ]
    return _push_list(session, repository, tag, DOCKER_LIST, child_entries, None)


def _archs(architectures: Sequence[str], children: Sequence[str]) -> list[str]:
    # Given children get the given architectures in order, repeating them when there are fewer.
    return [(architectures or ["amd64"])[i % max(len(architectures), 1)] for i in range(len(children))]


def push_artifact(
    target: str | Target | Session,
    repository: str,
    tag: str | None,
    *,
    config_media_type: str = "application/vnd.example.thing.v1+json",
    config: bytes | None = None,
    artifact_type: str | None = None,
    payload: bytes = b"hello from payloadtags tests\n",
    layer_media_type: str = "application/vnd.example.thing.layer.v1+txt",
    annotations: Mapping[str, str] | None = None,
) -> str:
    """An OCI manifest whose config is not an image config.

    The default is an artifact with its own JSON config type. With config_media_type=OCI_EMPTY (and
    usually artifact_type) it is the OCI 1.1 form: the empty ``{}`` config plus ``artifactType``.
    """
    session = _session(target)
    if config is None:
        config = EMPTY_JSON if config_media_type == OCI_EMPTY else canonical({"thing": repository})
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_media_type, **push_blob(session, repository, config)},
        "layers": [{"mediaType": layer_media_type, **push_blob(session, repository, payload)}],
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = canonical(manifest)
    return push_manifest(session, repository, tag or sha256(body), body, OCI_MANIFEST)


# --- looking ---------------------------------------------------------------------------------------


@attrs.frozen
class Fetched:
    digest: str
    media_type: str
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


def get_manifest(target: str | Target | Session, repository: str, reference: str) -> Fetched | None:
    """The manifest as stored (all four Accept types), or None when the registry has none."""
    session = _session(target)
    answer = session.request("GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT})
    if answer.status == 404:
        return None
    session.expect(answer, 200, what=f"get manifest {repository}:{reference}")
    return Fetched(
        digest=answer.header("docker-content-digest") or sha256(answer.body),
        media_type=(answer.header("content-type") or "").split(";")[0],
        content=answer.body,
    )


def resolve(target: str | Target | Session, repository: str, reference: str) -> str | None:
    """The digest a tag (or digest) resolves to, or None."""
    fetched = get_manifest(target, repository, reference)
    return fetched.digest if fetched else None


def tag_manifest(target: str | Target | Session, repository: str, source: str, new_tag: str) -> str:
    """Point new_tag at the manifest that source (a tag or digest) names; the digest stays the same."""
    session = _session(target)
    fetched = get_manifest(session, repository, source)
    if fetched is None:
        raise PushError(f"{repository}:{source} not found")
    return push_manifest(session, repository, new_tag, fetched.content, fetched.media_type)


def list_tags(target: str | Target | Session, repository: str) -> list[str]:
    """Sorted tags; [] for an unknown repository or one whose tags are all gone."""
    session = _session(target)
    answer = session.request("GET", f"/v2/{repository}/tags/list")
    if answer.status == 404:
        return []
    session.expect(answer, 200, what=f"list tags of {repository}")
    return sorted(json.loads(answer.body).get("tags") or [])


def catalog(target: str | Target | Session, page_size: int = 1000) -> list[str]:
    """Every repository name, in the registry's order, following the Link header."""
    session = _session(target)
    names: list[str] = []
    path: str | None = f"/v2/_catalog?n={page_size}"
    while path:
        answer = session.expect(session.request("GET", path), 200, what="catalog")
        names.extend(json.loads(answer.body).get("repositories") or [])
        link = answer.header("link")
        path = link.split(";")[0].strip().strip("<>") if link else None
    return names


def delete_manifest(target: str | Target | Session, repository: str, digest: str) -> int:
    """DELETE by digest; returns the HTTP status (202 when deleted)."""
    session = _session(target)
    return session.request("DELETE", f"/v2/{repository}/manifests/{digest}").status


def blob(target: str | Target | Session, repository: str, digest: str) -> bytes | None:
    session = _session(target)
    answer = session.request("GET", f"/v2/{repository}/blobs/{digest}")
    return answer.body if answer.status == 200 else None
