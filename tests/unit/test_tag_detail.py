"""One tag's detail: its manifest read every time, its image config read once per repository and digest."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from payloadtags.inventory import OCI_MANIFEST, Inventory
from payloadtags.names import TagRef
from payloadtags.registry import Manifest
from payloadtags.registry.blobcache import BlobCache
from payloadtags.registry.content import MAX_JSON_DEPTH, nested_deeper_than
from payloadtags.registry.errors import RegistryNotFound
from tests.unit.test_repoindex import run

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """Manifests by (repository, tag), blobs by (repository, digest); records every read."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.reads: list[str] = []

    def push(
        self, repository: str, tag: str, config: dict[str, Any] | bytes, config_digest: str | None = None
    ) -> None:
        content = config if isinstance(config, bytes) else json.dumps(config).encode()
        named = config_digest or digest(content)
        self.blobs[(repository, named)] = content
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "digest": named, "size": len(content)},
            "layers": [],
        }
        self.manifests[(repository, tag)] = json.dumps(manifest).encode()

    async def manifest(self, repository: str, reference: str) -> Manifest:
        self.reads.append(f"manifest {repository}:{reference}")
        content = self.manifests[(repository, reference)]
        return Manifest(digest(content), OCI_MANIFEST, content)

    async def blob(self, repository: str, digest: str, max_bytes: int = 4 << 20) -> bytes:
        self.reads.append(f"blob {repository}@{digest}")
        try:
            return self.blobs[(repository, digest)]
        except KeyError:
            raise RegistryNotFound(f"blob {repository}@{digest}") from None


def ref(repository_path: str, tag: str) -> TagRef:
    return TagRef("team", repository_path, tag)


def test_a_second_get_reads_only_the_manifest_and_a_retag_shows_the_new_config() -> None:
    registry = Registry()
    registry.push("team/app", "v1", {"architecture": "amd64"})
    inventory = Inventory(registry)  # type: ignore[arg-type]
    first = run(inventory.detail(ref("app", "v1")))
    second = run(inventory.detail(ref("app", "v1")))
    assert first.config == second.config == {"architecture": "amd64"}
    assert [r.split()[0] for r in registry.reads] == ["manifest", "blob", "manifest"]
    registry.push("team/app", "v1", {"architecture": "arm64"})  # the tag now names another image
    assert run(inventory.detail(ref("app", "v1"))).config == {"architecture": "arm64"}
    assert [r.split()[0] for r in registry.reads[3:]] == ["manifest", "blob"]


def test_a_config_read_in_one_repository_is_not_shown_for_another() -> None:
    registry = Registry()
    registry.push("team/app", "v1", {"architecture": "amd64"})
    registry.push("team/other", "v1", {"architecture": "amd64"})
    del registry.blobs[next(key for key in registry.blobs if key[0] == "team/other")]
    inventory = Inventory(registry)  # type: ignore[arg-type]
    assert run(inventory.detail(ref("app", "v1"))).config == {"architecture": "amd64"}
    # Same digest, but this repository does not hold the blob: the registry is asked, and says so.
    assert run(inventory.detail(ref("other", "v1"))).config is None
    assert registry.reads[-1].startswith("blob team/other@")


def nested(levels: int) -> bytes:
    """A JSON object with arrays inside it, ``levels`` levels in all."""
    return b'{"a":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def test_a_config_nested_too_deeply_to_show_is_left_out() -> None:
    registry = Registry()
    registry.push("team/app", "deepest-shown", nested(MAX_JSON_DEPTH))
    registry.push("team/app", "too-deep", nested(MAX_JSON_DEPTH + 1))
    registry.push("team/app", "beyond-recursion", nested(20_000))
    inventory = Inventory(registry)  # type: ignore[arg-type]
    assert run(inventory.detail(ref("app", "deepest-shown"))).config == json.loads(nested(MAX_JSON_DEPTH))
    assert run(inventory.detail(ref("app", "too-deep"))).config is None
    assert run(inventory.detail(ref("app", "beyond-recursion"))).config is None


def test_the_depth_told_from_the_text_is_the_walks() -> None:
    # Few brackets in the text: no walk; brackets in strings, or UTF-16 and -32 text, only count more.
    documents = [
        nested(3),
        nested(MAX_JSON_DEPTH),
        nested(MAX_JSON_DEPTH + 1),
        b'{"a":"' + b"[{" * MAX_JSON_DEPTH + b'","b":[[{}]]}',
        b'{"a":[' + b"{}," * MAX_JSON_DEPTH + b"{}]}",
    ]
    for text in documents:
        document = json.loads(text)
        for depth in (1, 2, 3, 4, MAX_JSON_DEPTH):
            walked = nested_deeper_than(document, depth)
            for encoding in ("utf-8", "utf-16", "utf-32-be"):
                told = nested_deeper_than(document, depth, text.decode().encode(encoding))
                assert told == walked, (text[:20], depth, encoding)


def test_content_that_does_not_match_its_digest_is_never_kept() -> None:
    registry = Registry()
    wrong = "sha256:" + "0" * 64
    registry.push("team/app", "v1", {"architecture": "amd64"}, config_digest=wrong)
    inventory = Inventory(registry)  # type: ignore[arg-type]
    run(inventory.detail(ref("app", "v1")))
    run(inventory.detail(ref("app", "v1")))
    assert [r.split()[0] for r in registry.reads] == ["manifest", "blob", "manifest", "blob"]
    assert len(inventory.configs) == 0


def test_the_cache_is_bounded_in_bytes_least_recently_used_out() -> None:
    cache = BlobCache(max_bytes=30, max_blob_bytes=20)
    cache.put("r", "a", b"x" * 10)
    cache.put("r", "b", b"x" * 10)
    cache.put("r", "big", b"x" * 21)  # over the per-blob bound: not kept
    assert cache.get("r", "big") is None
    assert cache.get("r", "a") is not None  # now the most recently used
    cache.put("r", "c", b"x" * 15)  # 35 bytes: the least recently used ("b") goes
    assert cache.get("r", "b") is None
    assert cache.get("r", "a") is not None and cache.get("r", "c") is not None
    assert cache.size == 25 and len(cache) == 2
