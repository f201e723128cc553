"""The server's parts start in order and stop in reverse, one after the other."""

from __future__ import annotations

import pytest
from twisted.internet import defer

from payloadtags.lifecycle import OrderedServices, Part


def parts(events: list[str], gates: dict[str, defer.Deferred[None]]) -> OrderedServices:
    services = OrderedServices()
    for name in ("registry", "watch", "serving"):

        def start(name: str = name) -> None:
            events.append(f"start {name}")

        async def stop(name: str = name) -> None:
            events.append(f"stop {name}")
            if name in gates:
                await gates[name]
            events.append(f"stopped {name}")

        Part(name, start=start, stop=stop).setServiceParent(services)
    return services


def test_parts_start_in_order_and_stop_in_reverse_one_after_the_other() -> None:
    events: list[str] = []
    drain: defer.Deferred[None] = defer.Deferred()
    services = parts(events, {"serving": drain})
    services.startService()
    assert events == ["start registry", "start watch", "start serving"]
    events.clear()
    stopped = services.stopService()
    # The drain of the part started last holds back every other part's stop.
    assert events == ["stop serving"]
    assert not stopped.called
    drain.callback(None)
    assert events == [
        "stop serving",
        "stopped serving",
        "stop watch",
        "stopped watch",
        "stop registry",
        "stopped registry",
    ]
    assert stopped.called


def test_a_part_that_fails_to_start_leaves_only_the_parts_before_it_to_stop() -> None:
    events: list[str] = []
    services = OrderedServices()
    Part(
        "registry", start=lambda: events.append("start registry"), stop=lambda: events.append("stop registry")
    ).setServiceParent(services)

    def refuse() -> None:
        raise OSError("port in use")

    Part("serving", start=refuse, stop=lambda: events.append("stop serving")).setServiceParent(services)
    with pytest.raises(OSError):
        services.startService()
    services.stopService()
    assert events == ["start registry", "stop registry"]
