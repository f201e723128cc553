"""The server's parts start in order and stop in reverse, one after the other; a stop signal during the
start-up checks ends them."""

from __future__ import annotations

import signal

import pytest
from twisted.internet import defer

from payloadtags.lifecycle import OrderedServices, Part, StoppedDuringChecks, StopSignals


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


def test_a_stop_signal_ends_the_start_up_checks_where_they_are_and_only_them() -> None:
    # Called as Python calls a handler: in the main thread, between two steps of the checks.
    signals = StopSignals()
    done: list[str] = []
    with pytest.raises(StoppedDuringChecks) as stopped, signals.interrupting():
        done.append("began")
        signals._handle(signal.SIGTERM, None)
        done.append("went on")  # never
    assert (stopped.value.signal_name, signals.received, done) == ("SIGTERM", "SIGTERM", ["began"])
    # Received before the checks: they do not begin.
    with pytest.raises(StoppedDuringChecks), signals.interrupting():
        done.append("began again")
    assert done == ["began"]
    # Outside the checks a signal is only noted, as before the reactor runs.
    later = StopSignals()
    later._handle(signal.SIGINT, None)
    assert later.received == "SIGINT"
