"""Lists in flight together share one registry read of a repository and, showing it whole, its
formatting (api.render.SharedText), on the real registry: each list is byte for byte what it is
alone, the repository is formatted once for all of them, a list that goes away half way leaves the
others whole, and a user who may not see a repository gets none of it while another user's list
that shows it shares the read.

The lists are started in one reactor turn, as the server starts requests that arrive together, and
written by write_streamed (a chunk per reactor turn); the last test sends them to the server itself."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from payloadtags.access.authz import AlwaysAllow
from payloadtags.api import render
from payloadtags.api.negotiation import MediaType
from payloadtags.api.options import list_options
from payloadtags.api.render import SharedText, render_list, streamed_list_chunks
from payloadtags.api.streaming import write_streamed
from payloadtags.api.tags import TagsService
from payloadtags.identity import UserInfo
from payloadtags.inventory import Inventory, Run
from payloadtags.model import ListMeta, tag_object
from payloadtags.names import TagRef
from payloadtags.registry import RegistryClient
from tests.integration.test_output_bounds import many_tags
from tests.support.registry_server import RegistryServer
from tests.unit.test_list_stream import Recorded
from tests.unit.test_render import _MEDIA, HOST
from tests.unit.test_streaming import Request

NAMESPACE = "shared-lists"
APP, SECRET = 1_250, 300  # app: two whole chunks of 500 and a half one
ALICE = UserInfo("alice", groups=("devs",))
BOB = UserInfo("bob", groups=("devs",))
FORMS = [("full", "Metadata"), ("partial", "Metadata")] + [
    ("table", i) for i in ("Metadata", "Object", "None")
]
B = "/apis/payload-registry.deckhouse.io/v1alpha1"


@pytest.fixture(scope="module")
def namespace(registry: RegistryServer) -> str:
    many_tags(registry, f"{NAMESPACE}/app", APP)
    many_tags(registry, f"{NAMESPACE}/secret", SECRET)
    return NAMESPACE


@attrs.frozen
class NotSecret:
    """Bob may not see the secret repository; everyone else sees everything."""

    def allowed(self, user: UserInfo, verb: str, namespace: str, path: str) -> bool:
        return user.name != "bob" or path != "secret"

    def allowed_everywhere(self, user: UserInfo, verb: str, namespace: str) -> bool:
        return user.name != "bob"


def tags(count: int) -> list[str]:
    return [f"v{i:06d}" for i in range(count)]


def reference(media: MediaType, include: str, with_secret: bool = True) -> bytes:
    refs = [TagRef(NAMESPACE, "app", tag) for tag in tags(APP)]
    if with_secret:
        refs += [TagRef(NAMESPACE, "secret", tag) for tag in tags(SECRET)]
    document = render_list(
        [tag_object(HOST, ref) for ref in refs], ListMeta(resource_version="7"), media, include
    )
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


class Leaving(Request):
    """A client that goes away after ``after`` chunks."""

    def __init__(self, after: int | None = None) -> None:
        super().__init__()
        self.after = after

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.after is not None and len(self.written) == self.after:
            self.lose()


@attrs.define
class Lists:
    reactor: Any
    client: RegistryClient
    authorizer: Any = attrs.field(factory=AlwaysAllow)
    shared: SharedText | None = attrs.field(factory=SharedText)

    async def together(self, lists: list[tuple[UserInfo, MediaType, str, Leaving]]) -> None:
        """The lists begun in one reactor turn (their reads may all be shared), then written."""
        service = TagsService(Inventory(self.client), HOST, self.authorizer, Recorded())
        go: Deferred[None] = Deferred()

        async def one(user: UserInfo, media: MediaType, include: str, request: Leaving) -> None:
            runs, meta = await service.list_runs(user, NAMESPACE, list_options({}))
            await go

            def begin() -> None:
                request.code = 200

            chunks = streamed_list_chunks(runs, meta, media, HOST, include, shared=self.shared)
            await write_streamed(request, chunks, self.reactor, begin)  # type: ignore[arg-type]

        writing = [Deferred.fromCoroutine(one(*entry)) for entry in lists]
        go.callback(None)
        await gatherResults(writing)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many items ``render._ItemMaker`` makes, whichever list asks."""
    count = [0]
    original = render._ItemMaker.laid

    def counting(self: render._ItemMaker, tags: Sequence[str], pieces: list[str]) -> list[str]:
        count[0] += len(tags)
        return original(self, tags, pieces)

    monkeypatch.setattr(render._ItemMaker, "laid", counting)
    yield count


@pytest_twisted.ensureDeferred
async def test_lists_together_are_each_the_bytes_of_a_list_alone_and_formatted_once(
    reactor: Any, make_client: Any, registry: RegistryServer, namespace: str, counted: list[int]
) -> None:
    lists = Lists(reactor, make_client(registry))
    requests = [(ALICE, _MEDIA[media], include, Leaving()) for media, include in FORMS for _ in range(4)]
    await lists.together(requests)
    for _, media, include, request in requests:
        assert b"".join(request.written) == reference(media, include)
    # Each form's text made once for its four lists, the registry read once for all of them.
    assert counted[0] == len(FORMS) * (APP + SECRET)
    assert lists.shared is not None and lists.shared.taken == len(FORMS) * 3 * (3 + 1)
    assert len(lists.shared) == 0 and lists.shared.held == 0

    # Alone, without SharedText: the same bytes.
    alone = Lists(reactor, make_client(registry), shared=None)
    for form, include in FORMS:
        request = Leaving()
        await alone.together([(ALICE, _MEDIA[form], include, request)])
        assert b"".join(request.written) == reference(_MEDIA[form], include)


@pytest_twisted.ensureDeferred
async def test_a_list_that_goes_away_half_way_leaves_the_others_whole(
    reactor: Any, make_client: Any, registry: RegistryServer, namespace: str
) -> None:
    lists = Lists(reactor, make_client(registry))
    media = _MEDIA["table"]
    requests = [(ALICE, media, "Metadata", Leaving(after=2 if i == 1 else None)) for i in range(4)]
    await lists.together(requests)
    assert len(requests[1][3].written) == 2 and not requests[1][3].aborted  # gone: nobody to tell
    for index in (0, 2, 3):
        assert b"".join(requests[index][3].written) == reference(media, "Metadata")
    assert lists.shared is not None and lists.shared.taken > 0
    assert len(lists.shared) == 0 and lists.shared.held == 0


@pytest_twisted.ensureDeferred
async def test_a_user_who_may_not_see_a_repository_gets_none_of_it_from_a_shared_read(
    reactor: Any, make_client: Any, registry: RegistryServer, namespace: str, counted: list[int]
) -> None:
    lists = Lists(reactor, make_client(registry), authorizer=NotSecret())
    media = _MEDIA["full"]
    requests = [(user, media, "Metadata", Leaving()) for user in (ALICE, BOB, ALICE, BOB)]
    await lists.together(requests)
    for user, _, _, request in requests:
        body = b"".join(request.written)
        assert body == reference(media, "Metadata", with_secret=user is ALICE)
        assert (b'"repositoryPath":"secret"' in body) is (user is ALICE)
    assert counted[0] == APP + SECRET  # app shared by all four, secret by alice's two
    assert lists.shared is not None and lists.shared.taken == 3 * 3 + 1


@pytest_twisted.ensureDeferred
async def test_the_server_shares_formatting_between_lists_and_keeps_nothing_after(
    make_server: Any, registry: RegistryServer, namespace: str
) -> None:
    server = await make_server(registry)
    client = server.client(server.pki.admin)
    table = "application/json;as=Table;v=v1;g=meta.k8s.io"
    for accept in ("application/json", table):
        bodies = await gatherResults(
            [
                Deferred.fromCoroutine(
                    client.get(
                        f"{B}/namespaces/{NAMESPACE}/payloadrepositorytags", headers={"Accept": accept}
                    )
                )
                for _ in range(6)
            ]
        )
        documents = [json.loads(response.body) for response in bodies]
        assert all(response.code == 200 for response in bodies)
        assert all(document == documents[0] for document in documents)
        key = "rows" if accept == table else "items"
        assert len(documents[0][key]) == APP + SECRET
    shared = server.running.api.shared_text
    assert len(shared) == 0 and shared.held == 0


@attrs.define
class ReadBefore:
    """A list's runs, all read before it begins writing."""

    runs: list[Run]

    async def next(self) -> Run | None:
        return self.runs.pop(0) if self.runs else None

    def stop(self) -> None:
        self.runs.clear()


@pytest_twisted.ensureDeferred
async def test_lists_that_read_equal_answers_apart_share_one_formatting(
    reactor: Any, make_client: Any, registry: RegistryServer, namespace: str, counted: list[int]
) -> None:
    # Two groups of lists read the namespace apart (two clients: no read shared between them, as
    # lists that come after a read went out read again): equal answers in other tuples, formatted
    # once for both groups; bob still gets nothing of the repository he may not see, and a list that
    # goes away after its first chunk leaves the others whole.
    shared = SharedText()
    media = _MEDIA["full"]
    groups = [
        (make_client(registry), [(ALICE, Leaving()), (ALICE, Leaving())]),
        (make_client(registry), [(ALICE, Leaving()), (BOB, Leaving()), (ALICE, Leaving(after=1))]),
    ]
    go: Deferred[None] = Deferred()
    answers: dict[str, list[tuple[str, ...]]] = {}

    async def one(client: RegistryClient, user: UserInfo, request: Leaving, ready: Deferred[None]) -> None:
        service = TagsService(Inventory(client), HOST, NotSecret(), Recorded())
        runs, meta = await service.list_runs(user, NAMESPACE, list_options({}))
        read = []
        while (run := await runs.next()) is not None:
            read.append(run)
            answers.setdefault(run.repository_path, []).append(tuple(run.tags))
        ready.callback(None)
        await go

        def begin() -> None:
            request.code = 200

        chunks = streamed_list_chunks(ReadBefore(read), meta, media, HOST, "Metadata", shared=shared)
        await write_streamed(request, chunks, reactor, begin)  # type: ignore[arg-type]

    entries = [
        (client, user, request, Deferred[None]()) for client, lists in groups for user, request in lists
    ]
    ready = [entry[3] for entry in entries]
    writing = [Deferred.fromCoroutine(one(*entry)) for entry in entries]
    await gatherResults(ready)
    go.callback(None)
    await gatherResults(writing)
    # Equal answers, two of them (one per group), not one shared read.
    assert len({id(answer) for answer in answers["app"]}) >= 2 and len(set(answers["app"])) == 1
    for _, lists in groups:
        for user, request in lists:
            if request.after is not None:
                assert len(request.written) == 1
                continue
            body = b"".join(request.written)
            assert body == reference(media, "Metadata", with_secret=user is ALICE)
            assert (b'"repositoryPath":"secret"' in body) is (user is ALICE)
    assert counted[0] == APP + SECRET  # once for both groups
    assert len(shared) == 0 and shared.held == 0
