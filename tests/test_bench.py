"""The benchmarks' own arithmetic, without a broker: soak growth figures, the soak's recycled event
stream, the latency summaries the results JSON carries, the profile's attribution of sampled stacks
to data-plane stages, and the hard deadline that ends a run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench import profile
from bench.consent import summary as consent_summary
from bench.processes import RunDeadline, clean_stop, memory_mb
from bench.results import add_flat_ratios, measures, percentiles, size_ratio
from bench.soak import growth, recycled

PLANE = ("thread (7): data-plane;Thread._bootstrap (threading.py:1002);DataPlane._run_guarded (processors/dataplane.py:105);"
         "DataPlane.run (processors/dataplane.py:142)")


def _router_line(text: str) -> int:
    for number, line in enumerate((profile.PROJECT_ROOT / "processors" / "router.py").read_text().splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(text)


def test_soak_growth_compares_the_first_and_last_minute_medians() -> None:
    series = [{"t_s": float(t), "rss_worker_mb": 100.0 + (t >= 120) * 20} for t in range(0, 190, 10)]
    figures = growth(series, "rss_worker_mb")
    assert figures["first_minute_median"] == 100.0
    assert figures["last_minute_median"] == 120.0
    assert figures["growth_pct"] == pytest.approx(20.0)
    assert (figures["first"], figures["last"], figures["max"]) == (100.0, 120.0, 120.0)


def test_soak_growth_ignores_processes_not_sampled() -> None:
    assert growth([{"t_s": 0.0, "rss_broker_mb": None}], "rss_broker_mb")["growth_pct"] is None


def test_recycled_stream_sends_fresh_copies_with_new_event_ids() -> None:
    pool = [("tax.income_declared", {"event_id": "a", "amount": 1})]
    stream = recycled(pool)
    first, second = next(stream)[1], next(stream)[1]
    assert first["event_id"] is None and second["event_id"] is None  # the SDK gives each a new id
    first["event_id"] = "filled"
    assert pool[0][1]["event_id"] == "a" and second["event_id"] is None


def test_profile_attributes_stacks_to_data_plane_stages(tmp_path: Path) -> None:
    audit = _router_line("Output(AUDIT_TOPIC")
    raw = tmp_path / "worker.pyspy.txt"
    raw.write_text("\n".join([
        f"{PLANE};DataPlane._process (processors/dataplane.py:215);Router.route (processors/router.py:143);"
        "Router._admit (processors/router.py:162);Decoder.__call__ (backbone/events/serde.py:140) 30",
        f"{PLANE};DataPlane._process (processors/dataplane.py:215);Router.route (processors/router.py:144);"
        "PolicyEngine.decide (backbone/policy/engine.py:370) 50",
        f"{PLANE};DataPlane._process (processors/dataplane.py:215);Router.route (processors/router.py:145);"
        f"Router._outputs (processors/router.py:{audit});Encoder.__call__ (backbone/events/serde.py:100) 10",
        f"{PLANE};DataPlane._process (processors/dataplane.py:224);Checkpointer.place (processors/checkpoints.py:185) 5",
        "thread (9): consent-feed;Thread.run (threading.py:982);CompactedTopicReader._run (backbone/kafka/compacted.py:109) 5",
    ]) + "\n")
    summary = profile.summarise(raw, events=1000, rate=100)
    assert summary.samples == 100
    assert summary.stages == {profile.STAGE_DECIDE: 50, profile.STAGE_DECODE: 30, profile.STAGE_AUDIT: 10,
                              profile.STAGE_PLACE: 5}
    assert summary.threads == {"consent-feed": 5}
    assert summary.decode_share() == pytest.approx(0.30)
    assert summary.us_per_event(30) == pytest.approx(300.0)  # 30 samples at 100 Hz over 1,000 events


def test_profile_tells_the_data_planes_own_waits_apart() -> None:
    source = (profile.PROJECT_ROOT / "processors" / "dataplane.py").read_text().splitlines()
    flush = next(n for n, line in enumerate(source, 1) if "producer.flush(" in line and "remaining" in line)
    commit = next(n for n, line in enumerate(source, 1) if "consumer.commit(" in line)
    frames = PLANE.split(";")[1:]
    assert profile.stage_of([*frames, f"DataPlane._process (processors/dataplane.py:{flush})"], 10**9) == profile.STAGE_FLUSH
    assert profile.stage_of([*frames, f"DataPlane._process (processors/dataplane.py:{commit})"], 10**9) == profile.STAGE_COMMIT
    assert profile.stage_of([*frames, "DataPlane._next_batch (processors/dataplane.py:163)"], 10**9) == profile.STAGE_CONSUME


def test_a_run_past_its_hard_deadline_is_interrupted_so_its_cleanup_runs() -> None:
    cleaned = []
    with pytest.raises(RunDeadline):
        with clean_stop(deadline_s=0.2):
            try:
                time.sleep(5)
            finally:
                cleaned.append(True)
    assert cleaned == [True]


def test_memory_of_this_process_is_read_from_proc() -> None:
    rss, peak = memory_mb(__import__("os").getpid())
    assert rss is not None and peak is not None and 0 < rss <= peak


def test_soak_growth_leaves_out_samples_taken_after_the_load() -> None:
    series = [{"t_s": float(t), "rss_worker_mb": 100.0, "draining": False} for t in range(0, 130, 10)]
    series += [{"t_s": 130.0 + t, "rss_worker_mb": 500.0, "draining": True} for t in range(0, 60, 10)]
    assert growth(series, "rss_worker_mb")["growth_pct"] == 0.0


def test_latency_summary_keeps_the_keys_and_nearest_rank_figures_results_are_read_by() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1 .. 100, unsorted
    assert percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0, "max": 7.0}
    assert percentiles([]) == {}


def test_consent_summary_keeps_its_own_keys_rounding_and_ranks() -> None:
    values = [v + 0.04 for v in range(1, 101)]
    assert consent_summary(values) == {"p50": 51.0, "p99": 100.0, "max": 100.0, "n": 100}


def test_size_ratios_compare_the_largest_size_with_the_smallest_against_the_flat_goal() -> None:
    assert size_ratio(0.5, 1.5) == 3.0 and size_ratio(3.0, 1.0) == 0.33
    assert size_ratio(0.0, 1.0) is None  # nothing measured at the smallest size: no ratio, not a division by zero
    table = measures("t")
    add_flat_ratios(table, {"subject": 1.04}, lambda layout: f"after, ordered by {layout}")
    assert [list(column.cells) for column in table.columns] == [["after, ordered by subject"], ["1.04x"], ["flat: ~1x"]]
