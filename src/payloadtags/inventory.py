"""The registry seen as PayloadRepositoryTags: which tags a namespace holds, one tag's detail, deletes.

It knows namespaces (a repository's first path segment) but nothing of HTTP or Kubernetes JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from payloadtags.deferreds import bounded_map
from payloadtags.names import TagRef, split_repository
from payloadtags.registry import Catalog, Manifest, Registry
from payloadtags.registry.errors import RegistryNotFound
from payloadtags.repoindex import RepositoryIndex

T = TypeVar("T")
R = TypeVar("R")

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
IMAGE_CONFIG_TYPES = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
MAX_CONFIG_BYTES = 4 << 20


@attrs.frozen
class TagDetail:
    ref: TagRef
    digest: str
    media_type: str | None
    artifact_type: str | None
    manifest: dict[str, Any] | None
    config: dict[str, Any] | None


@attrs.frozen
class Page:
    refs: list[TagRef]
    more: bool


@attrs.define
class CatalogCursor:
    """Reads the catalog a page at a time, as ``(repository, namespace, path)`` triples.

    For one namespace the catalog is sought with ``last`` and read only until the first name outside
    ``<namespace>/``: the registry orders names component by component, so a namespace's repositories
    are contiguous and come right after the namespace's own name.
    """

    client: Catalog
    namespace: str | None
    last: str | None
    page_size: int
    first_page_size: int = 100
    done: bool = False
    _pages: int = 0

    def _next_size(self) -> int:
        # distribution fills a page by walking its storage past the namespace, so a namespace list
        # starts small (most namespaces hold few repositories) and grows; an all-namespaces list
        # reads whole pages from the start.
        if self.namespace is None:
            return self.page_size
        growth: int = 4**self._pages  # typeshed types int ** int as Any (a negative power is a float)
        return min(self.page_size, self.first_page_size * growth)

    async def next(self) -> list[tuple[str, str, str]]:
        if self.done:
            return []
        page = await self.client.catalog(last=self.last, n=self._next_size())
        self._pages += 1
        batch = []
        self.done = not page.more or not page.repositories
        for repository in page.repositories:
            if self.namespace is not None and not repository.startswith(self.namespace + "/"):
                self.done = True
                break
            parts = split_repository(repository)
            if parts is not None:
                batch.append((repository, *parts))
        if page.repositories:
            self.last = page.repositories[-1]
        return batch


@attrs.define
class IndexCursor:
    """A namespace's repositories from the repository index, in one batch: no catalog request."""

    index: RepositoryIndex
    namespace: str
    last: str | None
    done: bool = False

    async def next(self) -> list[tuple[str, str, str]]:
        if self.done:
            return []
        self.done = True
        batch = []
        for repository in self.index.namespace_repositories(self.namespace, after=self.last):
            parts = split_repository(repository)
            if parts is not None:
                batch.append((repository, *parts))
        return batch


@attrs.define
class Inventory:
    client: Registry
    concurrency: int = 16
    page_size: int = 1000
    # When given and ready, namespace lists take their repositories from it instead of the catalog.
    index: RepositoryIndex | None = None

    async def _tags_of(self, repositories: Sequence[str]) -> list[list[str]]:
        return await bounded_map(self.client.tags, repositories, self.concurrency)

    async def list(
        self,
        namespace: str | None,
        *,
        limit: int | None = None,
        after: TagRef | None = None,
        accept: Callable[[TagRef], bool] = lambda ref: True,
        readable: Callable[[str, str], bool] = lambda namespace, path: True,
    ) -> Page:
        """Tags in ``namespace`` (all namespaces when None), sorted, starting after ``after``.

        ``readable(namespace, path)`` drops whole repositories before their tags are read (access is
        decided per repository path); ``accept`` then selects single tags.
        """
        refs: list[TagRef] = []
        if after is not None and readable(after.namespace, after.repository_path):
            tags = await self.client.tags(after.repository)
            refs.extend(
                r
                for r in (TagRef(after.namespace, after.repository_path, t) for t in tags if t > after.tag)
                if accept(r)
            )
        cursor: CatalogCursor | IndexCursor
        if namespace is not None and self.index is not None and self.index.ready:
            cursor = IndexCursor(self.index, namespace, after.repository if after is not None else None)
        else:
            cursor = CatalogCursor(
                self.client, namespace, after.repository if after is not None else namespace, self.page_size
            )
        # A limited page reads tag lists a slice at a time, so `--chunk-size=1` does not cost a
        # tag-list request for every repository of a catalog page.
        step = self.concurrency * 2 if limit is not None else None
        while not cursor.done and (limit is None or len(refs) <= limit):
            batch = [entry for entry in await cursor.next() if readable(entry[1], entry[2])]
            for lo in range(0, len(batch), step or max(len(batch), 1)):
                if limit is not None and len(refs) > limit:
                    break
                chunk = batch[lo : lo + step] if step else batch
                tag_lists = await self._tags_of([repository for repository, _, _ in chunk])
                for (_, ns, path), tags in zip(chunk, tag_lists, strict=True):
                    refs.extend(r for r in (TagRef(ns, path, t) for t in tags) if accept(r))
        if limit is not None and len(refs) > limit:
            return Page(refs[:limit], more=True)
        return Page(refs, more=False)

    async def exists(self, ref: TagRef) -> bool:
        return ref.tag in await self.client.tags(ref.repository)

    async def detail(self, ref: TagRef) -> TagDetail:
        """One tag with its manifest and, for images and JSON-configured artifacts, its config."""
        manifest = await self.client.manifest(ref.repository, ref.tag)
        body = _json_or_none(manifest.content)
        return TagDetail(
            ref=ref,
            digest=manifest.digest,
            media_type=manifest.media_type or (body or {}).get("mediaType"),
            artifact_type=(body or {}).get("artifactType") if isinstance(body, dict) else None,
            manifest=body if isinstance(body, dict) else None,
            config=await self._config(ref, manifest, body),
        )

    async def _config(self, ref: TagRef, manifest: Manifest, body: Any) -> dict[str, Any] | None:
        if not isinstance(body, dict):
            return None
        descriptor = body.get("config")
        if not isinstance(descriptor, dict) or not isinstance(descriptor.get("digest"), str):
            return None
        media_type = descriptor.get("mediaType", "")
        is_json = (
            media_type in IMAGE_CONFIG_TYPES
            or media_type.endswith("+json")
            or media_type == "application/json"
        )
        size = descriptor.get("size")
        if media_type == EMPTY_CONFIG or not is_json or not isinstance(size, int) or size > MAX_CONFIG_BYTES:
            return None
        try:
            content = await self.client.blob(ref.repository, descriptor["digest"], max_bytes=MAX_CONFIG_BYTES)
        except RegistryNotFound:
            # A config blob already garbage-collected or never pushed should not hide the tag itself.
            return None
        config = _json_or_none(content)
        return config if isinstance(config, dict) else None

    async def delete(self, ref: TagRef) -> str | None:
        return await self.client.delete_tag(ref.repository, ref.tag)


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


__all__ = ["CatalogCursor", "IndexCursor", "Inventory", "Page", "TagDetail"]
