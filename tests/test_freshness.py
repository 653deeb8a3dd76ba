"""Freshness model (refresh/monitoring/freshness.py): lag, data-as-of, breach state and alert transitions. Pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from refresh.core.clock import iso
from refresh.monitoring import freshness as fr
from refresh.monitoring.freshness import CommitTime, FreshnessRecord, RefreshResult

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def commits(*pairs: tuple[int, float]) -> list[CommitTime]:
    return [CommitTime(v, at(m)) for v, m in pairs]


def completed(job: str, minutes: float, started: float | None = None, whole: bool = False,
              **included: int) -> RefreshResult:
    return RefreshResult(job_id=job, status="Completed", ended_at=at(minutes),
                         started_at=at(started) if started is not None else None, whole_model=whole,
                         included={k.replace("__", "/"): v for k, v in included.items()})


def failed(job: str, minutes: float, status: str = "Failed") -> RefreshResult:
    return RefreshResult(job_id=job, status=status, ended_at=at(minutes), error_code="ModelRefreshFailed",
                         error_message="The credentials provided for the SQL source are invalid.",
                         workspace_name="Finance", dataset_name="Sales Model")


# -- commit times --------------------------------------------------------------------------------------


def test_commit_time_prefers_commit_info_then_blob_then_detection():
    blob = datetime(2026, 1, 1, 8, tzinfo=UTC)
    assert fr.commit_time(3, 1_700_000_000_123, blob, T0) == CommitTime(
        3, datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC), "commitInfo")
    assert fr.commit_time(3, None, blob, T0) == CommitTime(3, blob, "blob")
    assert fr.commit_time(3, None, None, T0) == CommitTime(3, T0, "detected")


# -- lag and data as of ----------------------------------------------------------------------------------


def test_nothing_seen_is_unknown_not_up_to_date():
    view = fr.freshness_of(FreshnessRecord(), 3600, at(0))
    assert (view.state, view.lag_seconds, view.breached, view.data_as_of) == ("unknown", 0.0, False, None)


def test_lag_counts_from_the_oldest_commit_no_completed_refresh_included():
    rec = FreshnessRecord()
    fr.record_commits(rec, "sales/orders", commits((5, 0), (6, 10)))
    fr.record_commits(rec, "sales/customers", commits((2, 4)))
    view = fr.freshness_of(rec, 3600, at(30))
    assert view.lag_seconds == 30 * 60
    assert view.state == "catching_up" and view.since == iso(at(0))
    assert view.breach_starts_at == iso(at(60))
    assert not view.breached

    # a refresh that included orders up to 6 leaves customers' commit at minute 4 as the oldest missing
    fr.record_refresh(rec, completed("j1", 31, 20, sales__orders=6))
    view = fr.freshness_of(rec, 3600, at(32))
    assert view.lag_seconds == 28 * 60
    assert view.tables["sales/orders"].data_as_of == iso(at(10))
    assert view.tables["sales/orders"].included_version == 6
    assert view.tables["sales/customers"].data_as_of is None
    assert view.refreshed_at == iso(at(31))
    # every commit up to minute 4 (exclusive) is in: overall "as of" is orders' minute 0? no: minute 10 is
    # after the missing minute-4 commit, so nothing certain is newer than the oldest missing commit
    assert view.data_as_of is None

    fr.record_refresh(rec, completed("j2", 40, 35, sales__customers=2))
    view = fr.freshness_of(rec, 3600, at(41))
    assert (view.state, view.lag_seconds, view.since) == ("up_to_date", 0.0, iso(at(40)))
    assert view.data_as_of == iso(at(10))


def test_overall_data_as_of_is_the_newest_time_before_the_oldest_missing_commit():
    rec = FreshnessRecord()
    fr.record_commits(rec, "a", commits((1, 0)))
    fr.record_commits(rec, "b", commits((1, 5)))
    fr.record_refresh(rec, completed("j1", 6, 5.5, a=1, b=1))
    fr.record_commits(rec, "b", commits((2, 20)))
    fr.record_commits(rec, "a", commits((2, 30)))
    view = fr.freshness_of(rec, None, at(31))
    assert view.data_as_of == iso(at(5))
    assert view.lag_seconds == 11 * 60
    assert view.slo_seconds is None and not view.breached and view.state == "catching_up"


def test_a_refresh_of_only_part_of_a_span_keeps_the_rest_missing():
    rec = FreshnessRecord()
    fr.record_commits(rec, "t", commits((1, 0), (2, 1), (3, 2)))
    fr.record_refresh(rec, completed("j", 5, 4, t=2))
    entry = rec.tables["t"]
    assert [(s.first_version, s.last_version) for s in entry.unincluded] == [(3, 3)]
    assert entry.included_version == 2
    # the span's oldest time is kept: the lag is overstated, never understated
    assert fr.freshness_of(rec, None, at(10)).lag_seconds == 10 * 60


def test_recording_is_idempotent_and_ignores_versions_already_included():
    rec = FreshnessRecord()
    assert fr.record_commits(rec, "t", commits((1, 0), (2, 1)))
    assert not fr.record_commits(rec, "t", commits((1, 0), (2, 1)))
    fr.record_refresh(rec, completed("j", 5, 4, t=2))
    assert not fr.record_commits(rec, "t", commits((2, 1)))
    assert fr.freshness_of(rec, None, at(6)).lag_seconds == 0


def test_failed_refresh_includes_nothing():
    rec = FreshnessRecord()
    fr.record_commits(rec, "t", commits((1, 0)))
    fr.record_refresh(rec, failed("j", 5))
    assert fr.freshness_of(rec, None, at(6)).lag_seconds == 6 * 60


def test_whole_model_refresh_includes_every_commit_made_before_it_started():
    rec = FreshnessRecord()
    fr.record_commits(rec, "a", commits((1, 0)))
    fr.record_commits(rec, "b", commits((7, 3)))
    fr.record_commits(rec, "b", commits((8, 12)))   # after the refresh started: not in it
    fr.record_refresh(rec, completed("manual", 15, 10, whole=True))
    view = fr.freshness_of(rec, None, at(20))
    assert view.tables["a"].included_version == 1
    assert view.tables["b"].included_version == 7
    assert view.tables["b"].unincluded_versions == (8, 8)
    assert view.lag_seconds == 8 * 60


def test_spans_and_tables_stay_bounded_and_merging_never_hides_the_oldest_commit():
    rec = FreshnessRecord()
    for i in range(50):
        fr.record_commits(rec, "t", commits((i, i)))
    entry = rec.tables["t"]
    assert len(entry.unincluded) == fr.MAX_SPANS
    assert entry.oldest_unincluded_commit_time == iso(at(0))
    assert entry.unincluded[-1].last_version == 49
    for i in range(fr.MAX_TABLES + 20):
        fr.record_commits(rec, f"up/{i}", commits((1, 0)))
        fr.record_refresh(rec, completed(f"j{i}", 1, 0.5, **{f"up__{i}": 1}))
    assert len(rec.tables) == fr.MAX_TABLES
    assert "t" in rec.tables  # a table with missing commits is never dropped
    assert rec.dropped_tables == 21
    text = json.dumps(rec.to_json())
    assert len(text) < 100_000


def test_record_round_trips_through_an_entity():
    rec = FreshnessRecord()
    fr.record_commits(rec, "t", [CommitTime(1, at(0), "detected")])
    fr.transition(rec, dataset="sales", slo_seconds=60, now=at(5), outcome=failed("j", 4))
    entity: dict = {"PartitionKey": "dataset", "RowKey": "sales"}
    rec.to_entity(entity)
    back = FreshnessRecord.from_entity(entity)
    assert back == rec
    assert back.tables["t"].approximate
    assert FreshnessRecord.from_entity(None) == FreshnessRecord()


# -- transitions ---------------------------------------------------------------------------------------


def names(events: list[fr.AlertEvent]) -> list[str]:
    return [e.event for e in events]


def test_failures_alert_each_failed_job_once_and_the_first_success_recovers():
    rec = FreshnessRecord()
    first = fr.transition(rec, dataset="sales", slo_seconds=None, now=at(1), outcome=failed("j1", 1))
    assert names(first) == ["refresh_failed"]
    e = first[0]
    assert (e.status, e.error_code, e.job_id, e.workspace, e.dataset_name) == (
        "Failed", "ModelRefreshFailed", "j1", "Finance", "Sales Model")
    assert e.error_message == "The credentials provided for the SQL source are invalid."
    assert e.id == fr.event_id("sales", "refresh_failed", "j1")
    # the same job's end delivered again: nothing
    assert fr.transition(rec, dataset="sales", slo_seconds=None, now=at(2), outcome=failed("j1", 1)) == []
    assert names(fr.transition(rec, dataset="sales", slo_seconds=None, now=at(3),
                               outcome=failed("j2", 3, "TimedOut"))) == ["refresh_failed"]
    assert rec.state.failures == 2 and rec.state.failing_since == iso(at(1))
    recovered = fr.transition(rec, dataset="sales", slo_seconds=None, now=at(5), outcome=completed("j3", 5))
    assert names(recovered) == ["refresh_recovered"]
    assert recovered[0].id == fr.event_id("sales", "refresh_recovered", "j3")
    assert names(fr.transition(rec, dataset="sales", slo_seconds=None, now=at(6), outcome=completed("j4", 6))) == []
    assert [o["event"] for o in rec.state.outbox] == ["refresh_failed", "refresh_failed", "refresh_recovered"]


def test_every_failure_status_alerts_and_cancelled_or_skipped_do_not():
    for status in ("Failed", "TimedOut", "Disabled", "NotRefreshable", "Rejected"):
        rec = FreshnessRecord()
        events = fr.transition(rec, dataset="d", slo_seconds=None, now=at(1), outcome=failed("j", 1, status))
        assert names(events) == ["refresh_failed"], status
    for status in ("Cancelled", "Skipped"):
        rec = FreshnessRecord()
        outcome = RefreshResult(job_id="j", status=status, ended_at=at(1))
        assert fr.transition(rec, dataset="d", slo_seconds=None, now=at(1), outcome=outcome) == [], status
        assert not rec.state.failing


def test_breach_is_announced_once_while_it_lasts_then_recovers_once():
    rec = FreshnessRecord()
    fr.record_commits(rec, "t", commits((1, 0)))
    slo = 30 * 60
    assert fr.transition(rec, dataset="d", slo_seconds=slo, now=at(30)) == []          # lag == SLO: not yet
    breached = fr.transition(rec, dataset="d", slo_seconds=slo, now=at(30.5))
    assert names(breached) == ["freshness_breached"]
    assert breached[0].occurred_at == iso(at(30))         # the exact instant the SLO was passed
    assert breached[0].lag_seconds == 30.5 * 60
    for minute in (31, 45, 90, 600):                      # every timer run while it lasts: nothing
        assert fr.transition(rec, dataset="d", slo_seconds=slo, now=at(minute)) == []
    view = fr.freshness_of(rec, slo, at(90))
    assert (view.state, view.since) == ("breached", iso(at(30)))
    assert fr.describe(view) == "breached for 1 h (lag 1 h 30 min, objective 30 min)"
    recovered = fr.transition(rec, dataset="d", slo_seconds=slo, now=at(601), outcome=completed("j", 600, 599, t=1))
    assert names(recovered) == ["freshness_recovered"]
    assert recovered[0].occurred_at == iso(at(600)) and recovered[0].lag_seconds == 0
    assert recovered[0].id == fr.event_id("d", "freshness_recovered", iso(at(30)))
    assert fr.transition(rec, dataset="d", slo_seconds=slo, now=at(700)) == []


def test_a_new_breach_after_recovery_gets_a_new_id_and_the_same_breach_the_same_id():
    def breach_once(rec: FreshnessRecord) -> fr.AlertEvent:
        return fr.transition(rec, dataset="d", slo_seconds=60, now=at(10))[0]

    a, b = FreshnessRecord(), FreshnessRecord()
    for rec in (a, b):
        fr.record_commits(rec, "t", commits((1, 0)))
    first = breach_once(a)
    assert first.id == breach_once(b).id  # two instances evaluating the same data agree
    fr.transition(a, dataset="d", slo_seconds=60, now=at(20), outcome=completed("j", 20, 19, t=1))
    fr.record_commits(a, "t", commits((2, 30)))
    again = fr.transition(a, dataset="d", slo_seconds=60, now=at(40))
    assert names(again) == ["freshness_breached"] and again[0].id != first.id


def test_failing_dataset_passes_its_slo_once_then_recovers_with_a_completed_refresh():
    rec = FreshnessRecord()
    fr.record_commits(rec, "t", commits((1, 0)))
    slo = 60 * 60
    seen: list[str] = []
    for i, minute in enumerate(range(5, 120, 10)):
        seen += names(fr.transition(rec, dataset="d", slo_seconds=slo, now=at(minute),
                                    outcome=failed(f"j{i}", minute)))
        seen += names(fr.transition(rec, dataset="d", slo_seconds=slo, now=at(minute + 1)))  # the timer
    assert seen.count("freshness_breached") == 1
    assert seen.count("refresh_failed") == 12
    breach = next(e for e in rec.state.outbox if e["event"] == "freshness_breached")
    assert breach["status"] == "Failed" and breach["error_code"] == "ModelRefreshFailed"
    end = fr.transition(rec, dataset="d", slo_seconds=slo, now=at(130), outcome=completed("ok", 130, 125, t=1))
    assert names(end) == ["refresh_recovered", "freshness_recovered"]


def test_removing_the_slo_while_breached_recovers():
    rec = FreshnessRecord()
    fr.record_commits(rec, "t", commits((1, 0)))
    assert names(fr.transition(rec, dataset="d", slo_seconds=60, now=at(5))) == ["freshness_breached"]
    assert names(fr.transition(rec, dataset="d", slo_seconds=None, now=at(6))) == ["freshness_recovered"]


def test_outbox_is_bounded_and_take_outbox_removes_only_named_events():
    rec = FreshnessRecord()
    for i in range(fr.MAX_OUTBOX + 5):
        fr.transition(rec, dataset="d", slo_seconds=None, now=at(i), outcome=failed(f"j{i}", i))
    assert len(rec.state.outbox) == fr.MAX_OUTBOX and rec.state.outbox_dropped == 5
    first = rec.state.outbox[0]["id"]
    assert fr.take_outbox(rec, [first])
    assert len(rec.state.outbox) == fr.MAX_OUTBOX - 1
    assert not fr.take_outbox(rec, [first])


def test_api_object_has_the_documented_fields():
    rec = FreshnessRecord()
    fr.record_commits(rec, "t", commits((4, 0)))
    out = fr.freshness_of(rec, 600, at(20)).to_json()
    assert out["data_as_of"] == {"overall": None, "tables": {"t": None}}
    assert (out["lag_seconds"], out["slo_seconds"], out["breached"], out["state"]) == (1200.0, 600, True, "breached")
    assert out["tables"]["t"]["unincluded_versions"] == [4, 4]
    assert out["refreshed_at"] is None
    assert out["text"].startswith("breached for 10 min")
    json.dumps(out)


# -- helpers the worker and detection call -----------------------------------------------------------------


def test_commit_times_keep_data_changes_and_fall_back_to_blob_then_detection():
    from refresh.detection.deltalog import CommitInfo
    from refresh.monitoring.freshness_tracker import commit_times

    def info(version: int, ts: int | None, data: bool = True) -> CommitInfo:
        return CommitInfo(table="t", version=version, operation="WRITE", timestamp=ts, data_change=data,
                          partitions=(), partitions_truncated=False, actions=1, metadata_seen=False)

    blob = {2: at(-5)}
    got = commit_times([info(1, int(at(-10).timestamp() * 1000)), info(2, None), info(3, None),
                        info(4, 1, data=False)], at(0), blob.get)
    assert got == [CommitTime(1, at(-10), "commitInfo"), CommitTime(2, at(-5), "blob"),
                   CommitTime(3, at(0), "detected")]


def test_result_from_running_reads_the_workers_claim():
    from refresh.monitoring.freshness_tracker import result_from_running

    running = {"job_id": "a" * 32, "started_at": iso(at(1)), "workspace_name": "Finance",
               "dataset_name": "Sales Model",
               "job": {"sources": {"t": {"first_version": 3, "last_version": 5, "commits": 2}},
                       "model_tables": ["Orders"], "whole_model": False}}
    r = result_from_running(running, "Failed", at(2), error_code="X", error_message="boom")
    assert (r.job_id, r.status, r.started_at, r.ended_at, dict(r.included), r.whole_model) == (
        "a" * 32, "Failed", at(1), at(2), {"t": 5}, False)
    assert (r.workspace_name, r.dataset_name, r.error_code, r.error_message) == ("Finance", "Sales Model", "X", "boom")
    running["job"]["model_tables"] = []
    assert result_from_running(running, "Completed", at(2)).whole_model


def test_commit_to_start_is_measured_from_the_oldest_commit_in_the_job():
    from refresh.monitoring.freshness_tracker import commit_to_start_seconds

    rec = FreshnessRecord()
    fr.record_commits(rec, "t", commits((3, 0), (4, 2)))
    fr.record_commits(rec, "t", commits((5, 7)))
    fr.record_commits(rec, "u", commits((1, 1)))
    entity: dict = {}
    rec.to_entity(entity)
    assert commit_to_start_seconds(entity, {"t": {"first_version": 5, "last_version": 5}}, at(10)) == 180
    assert commit_to_start_seconds(entity, {"t": {"first_version": 3, "last_version": 5},
                                            "u": {"first_version": 1, "last_version": 1}}, at(10)) == 600
    assert commit_to_start_seconds(entity, {"v": {"first_version": 1, "last_version": 1}}, at(10)) is None


def test_commits_recorded_late_or_twice_land_in_their_own_span_and_count():
    rec = FreshnessRecord()
    fr.record_commits(rec, "t", commits((7, 20), (8, 21)))
    # a slower instance (or a re-run after a crash) records earlier versions afterwards
    assert fr.record_commits(rec, "t", commits((3, 5), (4, 6), (7, 20)))
    spans = [(s.first_version, s.last_version, s.oldest) for s in rec.tables["t"].unincluded]
    assert spans == [(3, 4, iso(at(5))), (7, 8, iso(at(20)))]
    assert fr.freshness_of(rec, None, at(30)).lag_seconds == 25 * 60
    assert not fr.record_commits(rec, "t", commits((3, 5), (8, 21)))
    fr.record_refresh(rec, completed("j", 31, 30, t=4))
    assert fr.freshness_of(rec, None, at(32)).lag_seconds == 12 * 60


def test_result_from_an_outcome_row_as_written_and_as_read():
    from refresh.jobs.outcomes import _flatten, to_public
    from refresh.monitoring.freshness_tracker import result_from_row

    fields = {"job_id": "b" * 32, "status": "TimedOut", "queued_at": iso(at(0)), "started_at": iso(at(1)),
              "ended_at": iso(at(9)), "sources": {"t": {"first_version": 1, "last_version": 4, "commits": 2}},
              "model_tables": ["Orders"], "error_code": "TimedOut", "error_message": "refresh exceeded 8 min",
              "workspace_name": "Finance", "dataset_name": "Sales Model"}
    written = _flatten(fields)
    for row in (written, to_public(written)):
        r = result_from_row(row)
        assert (r.job_id, r.status, r.started_at, r.ended_at, dict(r.included), r.whole_model) == (
            "b" * 32, "TimedOut", at(1), at(9), {"t": 4}, False)
        assert (r.error_code, r.error_message, r.workspace_name) == ("TimedOut", "refresh exceeded 8 min", "Finance")
    bare = result_from_row(_flatten({"job_id": "c" * 32, "status": "Failed", "queued_at": iso(at(0)),
                                     "ended_at": iso(at(2)), "model_tables": [], "sources": None}))
    assert bare.whole_model and dict(bare.included) == {} and bare.started_at is None and bare.error_code is None
