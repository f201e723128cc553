"""Dangling tags on a real distribution 2.8 registry: listed, but naming a manifest revision it no
longer has (HEAD by tag 404, DELETE by digest 404).

The registry makes them itself: a digest DELETE removes the revision, then reads every tag link of
the repository to untag the ones on that digest; a link being rewritten at that moment (a PUT of
another tag truncates and rewrites its file) reads as garbage and the DELETE fails with 500
"invalid checksum digest format", leaving the tags on the deleted digest behind.

- `race_dangling` provokes exactly that with concurrent writes and digest deletes (a few seconds;
  the race is won in about one round in five on a 2-core machine).
- `make_dangling` leaves the same state at once, by removing the revision link from the registry's
  storage, as the failed DELETE did. tests/integration/test_consistency.py checks that the two
  states look the same through the API.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from tests.support import images
from tests.support.registry_server import RegistryServer


def revision_link(registry: RegistryServer, repository: str, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return (
        registry.root
        / "docker/registry/v2/repositories"
        / repository
        / "_manifests/revisions"
        / algorithm
        / hexdigest
        / "link"
    )


def make_dangling(registry: RegistryServer, repository: str, digest: str) -> None:
    """Every tag of ``repository`` on ``digest`` is left dangling, as a half-failed DELETE leaves it."""
    revision_link(registry, repository, digest).unlink()


def dangling_tags(target: str, repository: str) -> list[str]:
    session = images.Session(target)
    found = []
    for tag in images.list_tags(target, repository):
        answer = session.request(
            "HEAD", f"/v2/{repository}/manifests/{tag}", headers={"Accept": images.ACCEPT}
        )
        if answer.status == 404:
            found.append(tag)
    return found


def race_dangling(url: str, namespace: str, *, rounds: int = 60, seed: int = 0) -> tuple[str, list[str], int]:
    """Concurrent re-tag PUTs and digest DELETEs in fresh repositories until one is left with dangling
    tags: (repository, its dangling tags, 500 answers seen). Raises when no round produced one."""
    rng = random.Random(seed)
    errors = 0
    for round_ in range(rounds):
        repository = f"{namespace}/race{round_}"
        digests = [
            images.push_oci_image(url, repository, f"t{i}", seed=f"{repository}/{i}") for i in range(16)
        ]
        base = images.get_manifest(url, repository, "t0")
        assert base is not None

        def retag(i: int, base: images.Fetched = base, repository: str = repository) -> int:
            document = json.loads(base.content)
            document["annotations"] = {"nonce": os.urandom(8).hex()}
            session = images.Session(url)
            body = images.canonical(document)
            path = f"/v2/{repository}/manifests/w{i}"
            return session.request("PUT", path, body, {"Content-Type": base.media_type}).status

        jobs: list[Callable[[], int]] = [partial(images.delete_manifest, url, repository, d) for d in digests]
        jobs += [partial(retag, i) for i in range(32)]
        rng.shuffle(jobs)
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda job: job(), jobs))
        errors += statuses.count(500)
        left = dangling_tags(url, repository)
        if left:
            return repository, left, errors
        time.sleep(0.01)
    raise AssertionError(f"no dangling tag after {rounds} rounds of concurrent writes and deletes")


__all__ = ["dangling_tags", "make_dangling", "race_dangling", "revision_link"]
