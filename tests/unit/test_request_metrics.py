"""The request metrics keep each label set's looked-up children: counts must still land per label set."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from payloadtags.metrics import MAX_CACHED_LABELS, Metrics


def _sample(metrics: Metrics, name: str, labels: dict[str, str]) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_each_label_set_counts_its_own_requests_on_every_call() -> None:
    metrics = Metrics()
    for _ in range(3):
        metrics.observe_request("list", "payloadrepositorytags", 200, 0.002)
    metrics.observe_request("list", "payloadrepositorytags", 410, 0.001)
    metrics.observe_request("get", "payloadrepositorytags", 200, 0.5)
    requests = "payloadtags_apiserver_requests_total"
    durations = "payloadtags_apiserver_request_duration_seconds"
    list_labels = {"verb": "list", "resource": "payloadrepositorytags"}
    assert _sample(metrics, requests, {**list_labels, "code": "200"}) == 3
    assert _sample(metrics, requests, {**list_labels, "code": "410"}) == 1
    assert (
        _sample(metrics, requests, {"verb": "get", "resource": "payloadrepositorytags", "code": "200"}) == 1
    )
    assert _sample(metrics, f"{durations}_count", list_labels) == 4
    assert _sample(metrics, f"{durations}_sum", list_labels) == pytest.approx(0.002 * 3 + 0.001)
    assert _sample(metrics, f"{durations}_bucket", {**list_labels, "le": "0.005"}) == 4
    text = generate_latest(metrics.registry).decode()
    assert (
        'payloadtags_apiserver_requests_total{code="410",resource="payloadrepositorytags",verb="list"} 1.0'
        in text
    )


def test_label_sets_past_the_cached_ones_are_still_counted() -> None:
    metrics = Metrics()
    verbs = [f"verb{index}" for index in range(MAX_CACHED_LABELS + 10)]
    for _ in range(2):
        for verb in verbs:
            metrics.observe_request(verb, "", 405, 0.001)
    for verb in (verbs[0], verbs[-1]):
        labels = {"verb": verb, "resource": ""}
        assert _sample(metrics, "payloadtags_apiserver_requests_total", {**labels, "code": "405"}) == 2
        assert _sample(metrics, "payloadtags_apiserver_request_duration_seconds_count", labels) == 2


def test_the_exposition_has_no_created_series() -> None:
    # Every counter and histogram child would add a `*_created` sample: twice the label sets a scrape
    # stores, for a timestamp kube-apiserver and metrics-server do not expose either.
    metrics = Metrics()
    metrics.observe_request("list", "payloadrepositorytags", 200, 0.002)
    text = metrics.exposition().decode()
    assert "payloadtags_apiserver_requests_total{" in text
    assert "_created" not in text
