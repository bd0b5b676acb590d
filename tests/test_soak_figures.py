"""The soak's figures in its JSON: decided/s per whole minute of the load and RSS growth over its last part."""

from __future__ import annotations

from bench.soak import late_growth, per_minute, stalled


def _series(rate: float, seconds: int, rss: list[float], drained_rows: int = 2) -> list[dict]:
    rows = [{"t_s": float(t), "decided": int(rate * t), "rss_broker_mb": rss[min(len(rss) - 1, t // 10)], "draining": False}
            for t in range(0, seconds + 1, 10)]
    rows += [{"t_s": float(seconds + 10 * i), "decided": int(rate * seconds), "rss_broker_mb": 9999.0, "draining": True}
             for i in range(1, drained_rows + 1)]
    return rows


def test_a_steady_load_has_the_same_rate_every_minute_and_the_drain_is_left_out() -> None:
    assert per_minute(_series(2000, 300, [100.0])) == [2000.0] * 5


def test_a_stall_shows_in_the_minute_it_happens() -> None:
    rows = _series(2000, 300, [100.0])
    for row in rows:
        if row["t_s"] > 180 and not row["draining"]:
            row["decided"] = 360_000 + int(100 * (row["t_s"] - 180))
    rates = per_minute(rows)
    assert rates[:3] == [2000.0] * 3 and rates[3] == 100.0


def test_growth_over_the_last_part_ignores_the_warm_up_and_the_drain() -> None:
    warm_then_flat = [50.0] * 6 + [200.0] * 100  # grows in the first minute, then holds
    rows = _series(2000, 600, warm_then_flat)
    assert late_growth(rows, "rss_broker_mb", from_s=100, window_s=60) == 0.0
    growing = [100.0 + t for t in range(61)]
    assert (late_growth(_series(2000, 600, growing), "rss_broker_mb", from_s=100, window_s=60) or 0) > 10
    assert late_growth([], "rss_broker_mb", 0, 60) is None


def test_a_stall_is_seen_once_it_lasts_and_a_slow_but_moving_pipeline_is_not_one() -> None:
    rows = _series(2000, 600, [100.0], drained_rows=0)
    assert not stalled(rows, 2000)
    for row in rows:
        if row["t_s"] > 300:
            row["decided"] = 600_000 + int(50 * (row["t_s"] - 300))
    assert stalled(rows, 2000)
    assert not stalled(rows[: 300 // 10 + 10], 2000)  # 100 s of it only
    assert not stalled(_series(150, 600, [100.0]), 1000)  # 15% of the offered rate: slow, not stalled
