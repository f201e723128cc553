"""Lists of distribution 2.8's catalog around a repository with nested repositories that start with a
digit (docs/registry.md, "Catalog"): its storage walk lists `<ns>/app/0` before `<ns>/app`, a full
page whose last name is followed by a repository it is nested in comes without a next link, and
`last=<ns>/app/0` answers without `<ns>/app`. Lists show every tag once, in catalog order
(`<ns>/app` before `<ns>/app/0`, as the repository index has them), unpaged or a page at a time,
whatever the catalog's page size and wherever a page of the list ends.

(The cascade's, the sweep's and the dry-run count's tests of the same are in test_cleanup.py; here, the
cascade behind a token service that refuses a guessed name.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent

from payloadtags import repoindex
from payloadtags.api.registry_errors import api_error_for
from payloadtags.cleanup.cascade import Cascade, Contents
from payloadtags.cleanup.removal import NamespaceRemover
from payloadtags.cleanup.sweep import TERMINATING
from payloadtags.inventory import CatalogRest, Inventory
from payloadtags.metrics import InstrumentedRegistry, Metrics
from payloadtags.names import TagRef
from payloadtags.registry import RegistryClient
from payloadtags.registry.content import catalog_key
from payloadtags.registry.errors import RegistryAuthFailed, RegistryError, RegistryUnavailable
from payloadtags.registry_diagnosis import FailureLog
from tests.support import images
from tests.support.registry_server import RegistryServer, TokenServer

# 2.8's order (a walk of its storage), and catalog order, which lists show.
WALKED = ("a", "app/0", "app/0/x", "app", "b")
LISTED = ("a", "app", "app/0", "app/0/x", "b")


def push(registry: RegistryServer, namespace: str, paths: Sequence[str] = WALKED) -> None:
    for path in paths:
        images.push_oci_image(registry, f"{namespace}/{path}", "v1", seed=f"{namespace}-{path}")
    names = [name for name in images.catalog(registry) if name.startswith(namespace + "/")]
    assert names == [f"{namespace}/{path}" for path in paths]  # 2.8's order, as the tests expect it


def shown(refs: Sequence[TagRef]) -> list[str]:
    return [f"{ref.repository}:{ref.tag}" for ref in refs]


async def walk(inventory: Inventory, namespace: str | None, limit: int, carry: bool) -> list[str]:
    """Every page of a walk, as continue tokens make it: with what each page kept for the next
    (``carry``, the walk cache), or reading live from the repository each page resumes in (its seek
    of the catalog with ``last=`` that repository)."""
    refs: list[str] = []
    after: TagRef | None = None
    held: Mapping[str, Sequence[str]] | None = None
    rest: CatalogRest | None = None
    for _ in range(100):
        page = await inventory.list(namespace, limit=limit, after=after, held=held, rest=rest)
        refs += shown(page.refs)
        if not page.more:
            return refs
        after = page.last
        held, rest = (page.held, page.rest) if carry else (None, None)
    raise AssertionError("the walk did not end")


async def streamed(inventory: Inventory, namespace: str | None) -> list[str]:
    """A whole list as a streamed one reads it, a repository at a time."""
    reader = inventory.reader(namespace)
    refs: list[TagRef] = []
    while (run := await reader.next()) is not None:
        refs += [TagRef(run.namespace, run.repository_path, tag) for tag in run.tags]
    return shown(refs)


def expected(namespace: str, paths: Sequence[str] = LISTED) -> list[str]:
    return [f"{namespace}/{path}:v1" for path in paths]


@pytest_twisted.ensureDeferred
async def test_a_namespace_list_reads_past_a_catalog_page_that_ends_in_a_nested_repository(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    """With catalog pages of two, the first ends in `app/0` without a next link: the list stopped
    there, without `app`, `app/0/x` and `b`; with pages of three the seek after `app/0/x` left `app`
    out. (Pages of one or a thousand: each boundary, and none.)"""
    namespace = repo.partition("/")[0]
    push(registry, namespace)
    for page_size in (1, 2, 3, 1000):
        inventory = Inventory(registry_client, page_size=page_size)
        assert shown((await inventory.list(namespace)).refs) == expected(namespace), page_size
        assert await streamed(inventory, namespace) == expected(namespace), page_size


@pytest_twisted.ensureDeferred
async def test_a_paged_walk_shows_every_tag_once_across_a_nested_repository(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    """A page that ends in `app/0` or `app/0/x` (limit 3 or 4) is continued with a seek after it,
    which 2.8 answers without `app`; a page that ends in `app` was continued with `app/0` again. Each
    tag shows once, in the order of the unpaged list, whether the pages read live or take what the
    page before them read."""
    namespace = repo.partition("/")[0]
    push(registry, namespace)
    for page_size in (2, 1000):
        inventory = Inventory(registry_client, page_size=page_size)
        for limit in (1, 2, 3, 4):
            for carry in (False, True):
                refs = await walk(inventory, namespace, limit, carry)
                assert refs == expected(namespace), (page_size, limit, carry)


@pytest_twisted.ensureDeferred
async def test_a_page_continued_after_any_repository_shows_the_rest_of_the_list(
    registry: RegistryServer, registry_client: RegistryClient, repo: str
) -> None:
    """A continue token that points at any tag (`app/0` and `app/0/x` included, whose seek 2.8
    answers without `app`) gives the rest of the unpaged list, nothing left out, nothing again."""
    namespace = repo.partition("/")[0]
    push(registry, namespace)
    inventory = Inventory(registry_client, page_size=1000)
    whole = (await inventory.list(namespace)).refs
    for position, last in enumerate(whole):
        page = await inventory.list(namespace, limit=10, after=last)
        assert shown(page.refs) == shown(whole[position + 1 :]), last
    assert shown(whole) == expected(namespace)


@pytest_twisted.ensureDeferred
async def test_an_all_namespaces_list_reads_past_a_catalog_page_that_ends_in_a_nested_repository(
    fresh_registry: RegistryServer, make_client: Callable[..., RegistryClient]
) -> None:
    """`-A` reads the catalog from its start, whole pages: with pages of two, the first ends in
    `n1/app/0` without a next link, and the list ended there, without `n1/app` and namespace `n2`."""
    push(fresh_registry, "n1", ("a", "app/0", "app"))
    push(fresh_registry, "n2", ("b",))
    assert images.catalog(fresh_registry) == ["n1/a", "n1/app/0", "n1/app", "n2/b"]
    client = make_client(fresh_registry)
    everything = [*expected("n1", ("a", "app", "app/0")), *expected("n2", ("b",))]
    for page_size in (1, 2, 3, 1000):
        inventory = Inventory(client, page_size=page_size)
        assert shown((await inventory.list(None)).refs) == everything, page_size
        assert await streamed(inventory, None) == everything, page_size
        for limit in (1, 2, 3):
            for carry in (False, True):
                assert await walk(inventory, None, limit, carry) == everything, (page_size, limit, carry)


# A catalog whose seeks guess directories that are no repositories (`q/c` for `q/c/1`, `q/e/1` and
# `q/e` for `q/e/1/f/2`), in 2.8's order.
DIRECTORIES_WALKED = ("a", "c/1/2", "c/1", "d", "e/1/f/2")


def granting(
    real: set[str], refused: set[str], namespaces: set[str]
) -> Callable[[str | None, str, str, list[str]], list[str]]:
    """A token service's grants: pull on the repositories in ``real`` alone, unless refused, and on
    every name under a namespace in ``namespaces`` (`<ns>/*`)."""

    def grant(user: str | None, rtype: str, name: str, actions: list[str]) -> list[str]:
        if rtype != "repository" or name.partition("/")[0] in namespaces:
            return actions
        return [] if name not in real or name in refused else actions

    return grant


def says_what_to_grant(error: RegistryAuthFailed, names: Sequence[str]) -> bool:
    return (
        error.denied
        and any(name in error.message for name in names)
        and all(
            words in error.message for words in ("distribution 2.8 leaves it out of a catalog seek", "q/*")
        )
    )


@pytest_twisted.ensureDeferred
async def test_a_guessed_directory_its_token_service_refuses_fails_the_list_saying_what_to_grant(
    tmp_path: Path, make_client: Callable[..., RegistryClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a catalog page ends in a digit-nested name, the list reads the names 2.8's next seek
    leaves out (`q/c` for `q/c/1`), guessed: here only directories, which a token service that grants
    pull on repositories alone refuses. A refusal is not taken for "no repository" (a real one may be
    in that place, review-catalogfix2 F2): the list fails as it does for a listed repository, and its
    message names the guess, why it was read and what to grant. Granted `q/*`, the registry answers
    404 for the directories, which list as empty. A refused listed repository fails the list too."""
    refused: set[str] = set()
    namespaces: set[str] = set()
    real = {f"q/{path}" for path in DIRECTORIES_WALKED}
    guesses = ("q/c", "q/e", "q/e/1/f")
    token = TokenServer(tmp_path, users={"robot": "pw"}, grant=granting(real, refused, namespaces))
    try:
        with RegistryServer(token_server=token, username="robot", password="pw") as registry:
            push(registry, "q", DIRECTORIES_WALKED)
            client = make_client(registry)
            for page_size in (1, 2, 3):  # pages of four end in no digit-nested name
                inventory = Inventory(client, page_size=page_size)
                for read in (  # each read once
                    inventory.list("q"),
                    streamed(inventory, "q"),
                    walk(inventory, "q", 1, True),
                    Cascade(client, reactor, page_size=page_size).contents("q"),
                ):
                    with pytest.raises(RegistryAuthFailed) as failed:
                        await read
                    assert says_what_to_grant(failed.value, guesses), (page_size, failed.value.message)
            for page_size in (1, 2, 3):
                monkeypatch.setattr(repoindex, "CATALOG_PAGE", page_size)
                index = repoindex.RepositoryIndex()
                await index.refresh(client)
                with pytest.raises(RegistryAuthFailed) as failed:
                    await Inventory(client, index=index).list("q")
                assert says_what_to_grant(failed.value, guesses), (page_size, failed.value.message)
            namespaces.add("q")
            client = make_client(registry)  # no token refused before
            listed = expected("q", ("a", "c/1", "c/1/2", "d", "e/1/f/2"))
            for page_size in (1, 2, 3, 4, 1000):
                inventory = Inventory(client, page_size=page_size)
                assert shown((await inventory.list("q")).refs) == listed, page_size
                assert await streamed(inventory, "q") == listed, page_size
                for carry in (False, True):
                    assert await walk(inventory, "q", 1, carry) == listed, (page_size, carry)
                contents = await Cascade(client, reactor, page_size=page_size).contents("q")
                assert (contents.repositories, contents.tags) == (5, 5), page_size
            for page_size in (1, 2, 3, 4):
                monkeypatch.setattr(repoindex, "CATALOG_PAGE", page_size)
                index = repoindex.RepositoryIndex()
                await index.refresh(client)
                inventory = Inventory(client, index=index)
                assert shown((await inventory.list("q")).refs) == listed, page_size
                assert await streamed(inventory, "q") == listed, page_size
            namespaces.clear()
            refused.add("q/d")
            real |= set(guesses)  # only q/d is refused now
            client = make_client(registry)  # no token granted before
            for page_size in (1, 2, 1000):
                with pytest.raises(RegistryAuthFailed):
                    await Inventory(client, page_size=page_size).list("q")
                with pytest.raises(RegistryAuthFailed):
                    await streamed(Inventory(client, page_size=page_size), "q")
                with pytest.raises(RegistryAuthFailed):
                    await Cascade(client, reactor, page_size=page_size).contents("q")
    finally:
        token.close()


@pytest_twisted.ensureDeferred
async def test_a_real_repository_read_as_a_guess_and_refused_fails_the_list_whatever_the_page_size(
    tmp_path: Path, make_client: Callable[..., RegistryClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`q/app` is a repository 2.8's seek from `q/app/0` leaves out: a list whose catalog page ends
    there reads it as a guess. Refused, its tags vanished from a list that answered 200 with pages
    of one to three, and the list failed with pages of four or more, and through the repository index
    likewise (review-catalogfix2 F2). It fails whatever the page size."""
    refused: set[str] = set()
    token = TokenServer(
        tmp_path, users={"robot": "pw"}, grant=granting({f"q/{path}" for path in WALKED}, refused, set())
    )
    try:
        with RegistryServer(token_server=token, username="robot", password="pw") as registry:
            push(registry, "q", WALKED)
            refused.add("q/app")
            client = make_client(registry)
            for page_size in (1, 2, 3, 4, 5, 1000):
                inventory = Inventory(client, page_size=page_size)
                for namespace in ("q", None):
                    with pytest.raises(RegistryAuthFailed) as failed:
                        await inventory.list(namespace)
                    assert "q/app" in failed.value.message, (page_size, namespace)
                    with pytest.raises(RegistryAuthFailed):
                        await streamed(inventory, namespace)
            for page_size in (1, 2, 3, 4, 5):
                monkeypatch.setattr(repoindex, "CATALOG_PAGE", page_size)
                index = repoindex.RepositoryIndex()
                await index.refresh(client)
                with pytest.raises(RegistryAuthFailed):
                    await Inventory(client, index=index).list("q")
    finally:
        token.close()


@contextlib.contextmanager
def _robot_registry(tmp_path: Path) -> Iterator[tuple[TokenServer, RegistryServer]]:
    """A registry behind a token service that knows the robot, holding `q`'s ``WALKED`` repositories."""
    token = TokenServer(tmp_path, users={"robot": "pw"})
    try:
        with RegistryServer(token_server=token, username="robot", password="pw") as registry:
            push(registry, "q", WALKED)
            yield token, registry
    finally:
        token.close()


async def _tokens_cached_but_for_the_guess(client: RegistryClient) -> None:
    """Tokens for the catalog and every listed repository but `q/app` (the one 2.8's seek from
    `q/app/0` leaves out, read as a guess) are cached: a change at the token service then meets
    the guess alone."""
    await client.catalog(last=None, n=5)
    for path in WALKED:
        if path != "app":
            await client.tags(f"q/{path}")


@pytest_twisted.ensureDeferred
async def test_rejected_credentials_fail_a_list_that_reads_a_guess(
    tmp_path: Path, make_client: Callable[..., RegistryClient]
) -> None:
    """The password is rotated while tokens for the catalog and the other repositories are cached:
    the token service's 401 for the guessed `q/app` was taken for "no repository" and its tags left
    out of a 200 list, with pages of one to three (review-catalogfix2 F2). A credentials error fails
    the list whatever the page size."""
    with _robot_registry(tmp_path) as (token, registry):
        client = make_client(registry)
        await _tokens_cached_but_for_the_guess(client)
        assert token.users is not None
        token.users["robot"] = "rotated"  # the configured password no longer works
        for page_size in (1, 2, 3, 1000):
            with pytest.raises(RegistryAuthFailed) as failed:
                await Inventory(client, page_size=page_size).list("q")
            assert "rejected the credentials" in failed.value.message, page_size
            # No grant helps a rejected password: no advice to grant (review-catalogfix3 R3).
            assert "needs pull access" not in failed.value.message, (page_size, failed.value.message)
            assert not failed.value.denied


@pytest_twisted.ensureDeferred
async def test_a_guess_whose_token_service_fails_fails_the_list_as_unavailable(
    tmp_path: Path, make_client: Callable[..., RegistryClient]
) -> None:
    """The token service answers 503 once the catalog's and the listed repositories' tokens are
    cached: the guessed `q/app` (left out of the seek from `q/app/0`) fails the list with the
    registry-unavailable 503, as a listed repository would, whatever the page size, never reads as
    empty with its tags left out of a 200 list (review-catalogfix3 R2)."""
    with _robot_registry(tmp_path) as (token, registry):
        client = make_client(registry)
        await _tokens_cached_but_for_the_guess(client)
        token.fail_with = 503
        for page_size in (1, 2, 3, 1000):
            with pytest.raises(RegistryUnavailable) as failed:
                await Inventory(client, page_size=page_size).list("q")
            assert "answered HTTP 503" in failed.value.message, (page_size, failed.value.message)
            assert api_error_for(failed.value).status().code == 503


@pytest_twisted.ensureDeferred
async def test_a_guessed_directory_lists_as_empty_without_a_failure_logged_or_counted(
    fresh_registry: RegistryServer, make_client: Callable[..., RegistryClient]
) -> None:
    """The registry has no repository `q/c` (a directory for `q/c/1`, guessed where a page ends in
    it): its tag list's 404 is an answer, not a failure, neither logged as one nor counted as an
    error (review-catalogfix2 F3)."""
    for name in ("q/a", "q/c/1", "z/x"):
        images.push_oci_image(fresh_registry, name, "v1", seed=name)
    metrics = Metrics()
    client = InstrumentedRegistry(
        make_client(fresh_registry), metrics, on_failure=FailureLog(reactor.seconds)
    )
    with capturedLogs() as events:
        for page_size in (1, 2):
            inventory = Inventory(client, page_size=page_size)
            assert shown((await inventory.list("q")).refs) == ["q/a:v1", "q/c/1:v1"], page_size
            contents = await Cascade(client, reactor, page_size=page_size).contents("q")
            assert (contents.repositories, contents.tags) == (2, 2), page_size
    assert not [event for event in events if event.get("log_level") in (LogLevel.warn, LogLevel.error)]
    for outcome in ("error", "not_found"):
        assert not metrics.registry.get_sample_value(
            "payloadtags_registry_operations_total", {"operation": "tags", "outcome": outcome}
        ), outcome


@pytest_twisted.ensureDeferred
async def test_the_repository_index_reads_past_every_catalog_page_boundary(
    fresh_registry: RegistryServer,
    make_client: Callable[..., RegistryClient],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The index's refresh reads the catalog in pages of `CATALOG_PAGE`. 2.8 leaves `<ns>/app` out of
    its answer to `last=<ns>/app/0` whether or not the page before came with a next link (it has one
    when the page ends in `app/0` followed by `app/0/x`): with small pages every boundary falls
    somewhere, and the index holds every repository whatever the page size."""
    paths = ("a", "app/0", "app/0/1", "app/0/x", "app", "app/1/b/2", "app/1/b", "app/x", "b")
    push(
        fresh_registry, "q", ("a", "app/0/1", "app/0", "app/0/x", "app/1/b/2", "app/1/b", "app", "app/x", "b")
    )
    push(fresh_registry, "r", ("0", "x"))
    client = make_client(fresh_registry)
    real = {f"q/{path}" for path in paths} | {"r/0", "r/x"}
    for page_size in range(1, 10):
        monkeypatch.setattr(repoindex, "CATALOG_PAGE", page_size)
        index = repoindex.RepositoryIndex()
        await index.refresh(client)
        assert real <= set(index.after(None)), (page_size, sorted(real - set(index.after(None))))
        everything = [f"{name}:v1" for name in sorted(real, key=catalog_key)]
        assert shown((await Inventory(client, index=index).list(None)).refs) == everything, page_size


class Stopped(Exception):
    """Ends a cascade's retries in a test."""


@pytest_twisted.ensureDeferred
async def test_a_cascade_fails_its_passes_visibly_on_a_refused_guess_and_finishes_once_granted(
    tmp_path: Path, make_client: Callable[..., RegistryClient]
) -> None:
    """The cascade lists what 2.8's seek from a page's last name leaves out (`q/c` after `q/c/1`),
    guesses. Refused, that fails the pass as a listed repository's refusal does: retried, logged with
    what to grant, counted among the registry errors (review-catalogfix2 F1); granted `q/*`, the
    directory's 404 is nothing to delete, and the cascade finishes."""
    namespaces: set[str] = set()
    token = TokenServer(
        tmp_path, users={"robot": "pw"}, grant=granting({"q/a", "q/c/1", "z/x"}, set(), namespaces)
    )
    try:
        with RegistryServer(token_server=token, username="robot", password="pw") as registry:
            for name in ("q/a", "q/c/1", "z/x"):
                images.push_oci_image(registry, name, "v1", seed=name)
            delays: list[float] = []

            async def wait(delay: float) -> None:
                delays.append(delay)
                if len(delays) == 2:
                    raise Stopped

            cascade = Cascade(make_client(registry), reactor, page_size=2)
            with capturedLogs() as events, pytest.raises(Stopped):
                await cascade.run("q", wait=wait)
            warnings = [formatEvent(event) for event in events if event.get("log_level") == LogLevel.warn]
            assert len(warnings) == 2, warnings
            assert all("failure(s) at q/c," in warning for warning in warnings), warnings
            assert all("distribution 2.8 leaves it out of a catalog seek" in warning for warning in warnings)
            assert all("q/*" in warning for warning in warnings), warnings
            assert cascade.metrics.registry_errors_total == 2
            namespaces.add("q")
            client = make_client(registry)  # no token refused before

            async def no_failure(delay: float) -> None:
                raise AssertionError("a pass failed")

            await Cascade(client, reactor, page_size=2).run("q", wait=no_failure)
            assert (await Inventory(client).list("q")).refs == []
            assert shown((await Inventory(client).list("z")).refs) == ["z/x:v1"]
    finally:
        token.close()


@pytest.mark.parametrize("page_size", [3, 1000])
@pytest_twisted.ensureDeferred
async def test_a_cascade_guesses_nothing_after_the_catalogs_last_page(
    tmp_path: Path, make_client: Callable[..., RegistryClient], page_size: int
) -> None:
    """`q` is the catalog's last namespace and ends in `q/c/1`; its only page is not full and has no
    next link, so no seek follows and nothing can be left out of it. The cascade read the guess `q/c`
    after it all the same: refused by a token service that grants pull on repositories alone, every
    pass failed and the namespace stayed Terminating with every tag gone, while the dry-run count
    answered (review-catalogfix3 R1). It guesses only where a seek follows, as the count does."""
    token = TokenServer(tmp_path, users={"robot": "pw"}, grant=granting({"q/a", "q/c/1"}, set(), set()))
    try:
        with RegistryServer(token_server=token, username="robot", password="pw") as registry:
            for name in ("q/a", "q/c/1"):
                images.push_oci_image(registry, name, "v1", seed=name)
            client = make_client(registry)
            cascade = Cascade(client, reactor, page_size=page_size)
            assert (await cascade.contents("q")) == Contents(2, 2)

            async def no_failure(delay: float) -> None:
                raise AssertionError("a pass failed")

            with capturedLogs() as events:
                await cascade.run("q", wait=no_failure)
            assert not [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
            assert cascade.metrics.registry_errors_total == 0
            assert (await Inventory(client).list("q")).refs == []
            assert not any(scope.startswith("repository:q/c:") for r in token.requests for scope in r.scopes)
    finally:
        token.close()


@pytest.mark.parametrize("budget", [0.1, 0.005])
@pytest_twisted.ensureDeferred
async def test_a_namespace_deletecollection_503_says_why_its_last_pass_failed(
    tmp_path: Path, make_client: Callable[..., RegistryClient], budget: float
) -> None:
    """Every pass of the cascade fails at the refused guess `q/c`: each deletecollection call answered
    only "not finished within Ns", the reason in the server's log alone (review-catalogfix3 R4). Its
    503 names where the last pass failed and why, the cascade's warning: here, what to grant. A
    refusal of access is one a retry meets again, but not certainly (a grant may be rolling out): the
    call passes again until its budget ends (here, its first backoff would end past it), and then
    answers without Retry-After (review-dscheck F2, review-dscheck2 G2).

    The remover and its cascade share one clock, which stands still: the budget is not spent by the
    wall time the registry's answers take, however small it is or slow the machine
    (review-dscheck F5: the cascade on the reactor cut its reads off at the budget in wall time)."""
    token = TokenServer(
        tmp_path, users={"robot": "pw"}, grant=granting({"q/a", "q/c/1", "z/x"}, set(), set())
    )
    try:
        with RegistryServer(token_server=token, username="robot", password="pw") as registry:
            for name in ("q/a", "q/c/1", "z/x"):
                images.push_oci_image(registry, name, "v1", seed=name)

            async def terminating(namespace: str) -> tuple[str, str | None]:
                return TERMINATING, None

            clock = Clock()
            remover = NamespaceRemover(Cascade(make_client(registry), clock, page_size=2), clock, terminating)
            for _call in range(2):  # the second goes on with the walk the first left
                with pytest.raises(RegistryError) as failed:
                    await remover.remove("q", budget)
                assert failed.value.lasting  # no Retry-After: granting access is what helps
                message = failed.value.message
                assert message.startswith("removing the content of namespace q: not finished within "), (
                    message
                )
                assert "the last pass failed: 1 failure(s) at q/c, e.g. " in message, message
                assert "distribution 2.8 leaves it out of a catalog seek" in message, message
                assert "needs pull access to q/c, or to q/*" in message, message
    finally:
        token.close()
