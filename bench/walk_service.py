"""A walk's CPU in the service layer alone, against an unpaged list's: choosing the tags and formatting
them, without HTTP, TLS or a registry client.

`request_cpu.py` measures what a served page costs. This separates out the part of it that is
payloadtags' own list logic: `TagsService` with its walk cache over a real `Inventory`, and
`render.list_text` (a page) or `render.list_chunks` with a `render.SharedText` (the unpaged list, as
the server writes it), in this process, on a registry double that answers from memory (each `tags`
call a fresh tuple, as a registry read gives). A walk with ``--limit`` is compared with one unpaged
list of the same namespace, alternating which goes first; the double counts tag-list reads, so the
report also says how often a walk read each repository. Each side's CPU is also given in its two
parts per ``--limit`` tags, choosing the tags (`TagsService.list`) and formatting them, so that a
page's cost per tag can be told from its cost per page. ``--table``: as Tables, what kubectl get asks
for.

If the ratio here is near 1 while the served one is not, what a page adds is outside this layer: the
request's HTTP and TLS handling and the registry client.

Usage: .venv/bin/python bench/walk_service.py [--repositories 100] [--tags 1000] [--limit 500] [--reps 7]
       [--table]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from payloadtags.access.authz import AlwaysAllow  # noqa: E402
from payloadtags.api.negotiation import MediaType, negotiate  # noqa: E402
from payloadtags.api.options import list_options  # noqa: E402
from payloadtags.api.render import SharedText, list_chunks, list_text  # noqa: E402
from payloadtags.api.tags import ResourceVersions, TagsService  # noqa: E402
from payloadtags.api.walks import WalkCache  # noqa: E402
from payloadtags.identity import UserInfo  # noqa: E402
from payloadtags.inventory import Inventory  # noqa: E402
from payloadtags.registry.content import CatalogPage  # noqa: E402

NAMESPACE = "bench"
REGISTRY_HOST = "registry.example:5000"
USER = UserInfo(name="admin", groups=("system:masters",))
JSON = negotiate("application/json", collection=True)
TABLE = negotiate("application/json;as=Table;v=v1;g=meta.k8s.io", collection=True)

T = TypeVar("T")


class MemoryCatalog:
    """The registry's catalog and tag lists, from memory; counts the tag-list reads."""

    def __init__(self, repositories: int, tags: int) -> None:
        self.repositories = [f"{NAMESPACE}/app-{i:05d}" for i in range(repositories)]
        self.tag_names = [f"v{i:06d}" for i in range(tags)]
        self.reads = 0

    async def catalog(self, last: str | None = None, n: int = 1000) -> CatalogPage:
        names = [name for name in self.repositories if last is None or name > last]
        return CatalogPage(names[:n], more=len(names) > n)

    async def tags(self, repository: str, /) -> tuple[str, ...]:
        self.reads += 1
        return tuple(self.tag_names)


def done(coroutine: Coroutine[Any, Any, T]) -> T:
    """The coroutine's result: with the double, nothing waits, so it ends in this call."""
    outcome: list[T | Failure] = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    if not outcome:
        raise RuntimeError("the list waited for something: the double should answer at once")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def walk(service: TagsService, limit: int, media: MediaType = JSON) -> tuple[int, float]:
    """One whole walk in pages of ``limit``: the number of pages, and the CPU seconds of formatting
    them (the rest is choosing them)."""
    token = None
    pages = 0
    formatting = 0.0
    while True:
        query = {"limit": [str(limit)], **({"continue": [token]} if token else {})}
        page, meta = done(service.list(USER, NAMESPACE, list_options(query)))
        started = time.process_time()
        list_text(page.runs, meta, media, REGISTRY_HOST)
        formatting += time.process_time() - started
        pages += 1
        token = meta.continue_
        if not token:
            return pages, formatting


def unpaged(service: TagsService, media: MediaType = JSON) -> float:
    """One unpaged list, formatted as the server formats a whole list (its runs' text shared with
    other lists in flight); the CPU seconds of formatting it."""
    page, meta = done(service.list(USER, NAMESPACE, list_options({})))
    started = time.process_time()
    for _chunk in list_chunks(page.runs, meta, media, REGISTRY_HOST, shared=SharedText()):
        pass
    return time.process_time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=100)
    parser.add_argument("--tags", type=int, default=1000, help="per repository")
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--table", action="store_true", help="as Tables (kubectl get's)")
    args = parser.parse_args()
    media = TABLE if args.table else JSON

    registry = MemoryCatalog(args.repositories, args.tags)
    clock = Clock()
    # Lists use only the Catalog part of the Registry protocol (catalog and tags).
    inventory = Inventory(registry)  # type: ignore[arg-type]
    service = TagsService(
        inventory, REGISTRY_HOST, AlwaysAllow(), ResourceVersions(clock), walks=WalkCache(clock)
    )
    walk(service, args.limit, media)  # warm-up: imports, caches
    unpaged(service, media)

    walks: list[float] = []
    lists: list[float] = []
    walk_formatting: list[float] = []
    list_formatting: list[float] = []
    pages = 0
    walk_reads = list_reads = 0
    for rep in range(args.reps):
        order = ("walk", "list") if rep % 2 == 0 else ("list", "walk")
        for kind in order:
            before = registry.reads
            if kind == "walk":
                started = time.process_time()
                pages, formatting = walk(service, args.limit, media)
                walks.append(time.process_time() - started)
                walk_formatting.append(formatting)
                walk_reads = registry.reads - before
            else:
                started = time.process_time()
                formatting = unpaged(service, media)
                lists.append(time.process_time() - started)
                list_formatting.append(formatting)
                list_reads = registry.reads - before

    ratios = [w / u for w, u in zip(walks, lists, strict=True)]
    total = args.repositories * args.tags
    print(
        f"{total} tags in {args.repositories} repositories, pages of {args.limit}"
        + (" as Tables" if args.table else "")
        + f", {args.reps} repetitions"
    )
    print(
        f"walk: {statistics.median(walks) * 1000:.1f} ms CPU, {pages} pages, "
        f"{statistics.median(walks) / pages * 1000:.3f} ms per page; tag-list reads {walk_reads}"
    )
    print(f"unpaged list: {statistics.median(lists) * 1000:.1f} ms CPU; tag-list reads {list_reads}")
    print(f"walk / unpaged: median {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    # Per ``--limit`` tags: a page's, and the list's share for as many tags (min and median).
    per = args.limit / total

    def split(name: str, whole: list[float], formatting: list[float], scale: float) -> str:
        choosing = [(w - f) * scale * 1000 for w, f in zip(whole, formatting, strict=True)]
        made = [f * scale * 1000 for f in formatting]
        return (
            f"{name}: choosing {min(choosing):.3f} / {statistics.median(choosing):.3f} ms, "
            f"formatting {min(made):.3f} / {statistics.median(made):.3f} ms (min / median)"
        )

    print(split(f"per page of {args.limit}", walks, walk_formatting, 1 / pages))
    print(split(f"unpaged, per {args.limit} tags", lists, list_formatting, per))


if __name__ == "__main__":
    main()
