"""Counters of the namespace cleanup, kept as plain attributes so a metrics endpoint can expose them
later without this package knowing about any metrics library."""

from __future__ import annotations

import attrs


@attrs.define
class CleanupMetrics:
    """Monotonic counters (``*_total``) and a few gauges. One instance per server, shared by the
    controller and the deletecollection removal (`removal.namespace_remover`).

    `samples` gives them in Prometheus naming, ready for a text exposition.
    """

    # -- cascades (one per namespace that is Terminating or gone) -------------------------------
    cascades_started_total: int = 0
    cascades_succeeded_total: int = 0
    # Stopped on purpose: the namespace exists again, leadership was lost, or the controller stops.
    cascades_aborted_total: int = 0
    cascades_in_progress: int = 0
    # Tags resolved to a manifest digest that was then deleted (by the controller's cascades or a
    # deletecollection's), and dangling tags repaired; manifests deleted. The rest of this group but
    # the cascades_* and cascade_seconds_* fields counts both as well.
    tags_deleted_total: int = 0
    manifests_deleted_total: int = 0
    # Registry failures during cascades (each is retried with backoff), and the read-only subset.
    registry_errors_total: int = 0
    registry_readonly_waits_total: int = 0
    # Dangling tags (listed, their manifest revision gone) pointed at a placeholder and deleted.
    dangling_tags_repaired_total: int = 0
    # Passes that found tags and could remove none of them without an error to show for it.
    stuck_passes_total: int = 0
    # Seconds from the moment a cascade was queued to the verified-empty listing, summed and counted.
    cascade_seconds_sum: float = 0.0
    cascade_seconds_count: int = 0
    # -- sweeps -----------------------------------------------------------------------------------
    sweeps_total: int = 0
    sweeps_failed_total: int = 0
    # Namespaces found with content but no Namespace object, and those handed to a cascade.
    sweep_orphans_found_total: int = 0
    sweep_orphans_cleaned_total: int = 0
    # Candidates left alone because the cluster API said the namespace exists, or could not say.
    sweep_skipped_existing_total: int = 0
    sweep_skipped_unconfirmed_total: int = 0
    last_sweep_timestamp_seconds: float = 0.0
    # -- leader election ----------------------------------------------------------------------------
    is_leader: int = 0
    leader_acquisitions_total: int = 0
    leader_losses_total: int = 0

    def samples(self, prefix: str = "payloadtags_cleanup_") -> dict[str, float]:
        """Every counter and gauge as ``{metric name: value}``."""
        return {prefix + field.name: float(getattr(self, field.name)) for field in attrs.fields(type(self))}
