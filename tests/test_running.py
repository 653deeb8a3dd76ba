"""The running-job record (refresh/jobs/running.py): typed at the storage boundary, compatible with records
written before it existed, bounded whatever the job holds."""

from __future__ import annotations

from datetime import UTC, datetime

from refresh.jobs.pending import PendingJob, SourceChange
from refresh.jobs.running import MAX_LIST, MAX_MODEL_TABLES, RunningJob, capped_job, new_claim, parse_check_seq

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def _job(**kw) -> PendingJob:
    return PendingJob(job_id="a" * 32, trigger="commit", created_at="2026-11-21T11:59:00.000Z",
                      last_change_at="2026-11-21T11:59:00.000Z", due_at="2026-11-21T12:00:00.000Z",
                      sources={"t": SourceChange(1, 3, 3)}, triggers=["commit"], **kw)


def test_round_trip_keeps_the_keys_the_api_shows():
    claim = new_claim(_job(), NOW, enhanced=True, timeout_minutes=30, daily_limit=None, attempts=0,
                      names={"workspace_id": "w", "workspace_name": "W", "dataset_id": "d", "dataset_name": "D"})
    claim.refresh_id, claim.started_at, claim.check_seq, claim.next_check_at = "r", "s", 2, "2026-11-21T12:01:00.000Z"
    data = claim.to_dict()
    for key in ("job_id", "claimed_at", "started_at", "refresh_id", "timeout_at", "enhanced"):
        assert key in data
    assert data["job"]["triggers"] == ["commit"] and data["check_token"] == "2026-11-21T12:01:00.000Z#2"
    again = RunningJob.from_dict(data)
    assert again == claim and parse_check_seq(again.check_token) == 2


def test_a_record_written_by_the_previous_version_is_read():
    old = {"job_id": "a" * 32, "claimed_at": "2026-11-21T12:00:00.000Z", "job": _job().to_dict(), "enhanced": False,
           "lease_until": "2026-11-21T12:45:00.000Z", "timeout_at": "2026-11-21T12:30:00.000Z", "post_at": None,
           "refresh_id": "r",
           "check_token": "2026-11-21T12:00:00.000Z#1a2b3c4d", "check_errors": 0, "attempts": 0,
           "daily_limit": 8, "workspace_id": "w", "workspace_name": "W", "dataset_id": "d", "dataset_name": "D",
           "started_at": "s", "estimate": 12.5, "next_check_at": "2026-11-21T12:00:10.000Z", "future_key": 1}
    running = RunningJob.from_dict(old)
    assert running.refresh_id == "r" and running.check_seq == 1 and running.estimate == 12.5
    assert running.to_dict()["future_key"] == 1  # unknown keys are kept, not lost
    assert parse_check_seq(old["check_token"]) is None  # an old chain's token is simply not the live one


def test_capped_job_widens_to_the_whole_model_and_cuts_lists():
    job = _job(model_tables=[f"T{i}" for i in range(MAX_MODEL_TABLES + 1)], reasons=["x" * 10_000] * 50)
    capped = capped_job(job)
    assert capped.whole_model and capped.model_tables == [] and capped.objects() is None
    assert len(capped.reasons) == MAX_LIST and all(len(r) <= 500 for r in capped.reasons)
    assert len(job.model_tables) == MAX_MODEL_TABLES + 1  # the original is untouched


def test_what_a_post_asked_for_and_the_post_log_are_typed_and_read_from_older_records():
    from refresh.jobs.running import Posted, PostLog

    claim = new_claim(_job(), NOW, enhanced=True, timeout_minutes=30, daily_limit=None, attempts=0,
                      names={"workspace_id": "w", "workspace_name": "W", "dataset_id": "d", "dataset_name": "D"})
    claim.posted = Posted(type="Full", tables=("Orders",))
    claim.unsure("2026-11-21T12:00:05.000Z", "no answer")
    data = claim.to_dict()
    assert data["posted"] == data["unsure_posted"] == {"type": "Full", "tables": ["Orders"]}  # the stored shape
    assert RunningJob.from_dict(data) == claim
    log = PostLog.of(claim)
    assert PostLog.from_dict(log.to_dict()) == log
    older = {"job_id": claim.job_id, "unsure_since": "2026-11-21T12:00:05.000Z", "unsure_reason": "no answer",
             "busy_tries": "2", "unsure_posted": {"type": "Full", "tables": ["Orders"]}}
    again = new_claim(_job(), NOW, enhanced=True, timeout_minutes=30, daily_limit=None, attempts=0,
                      names={"workspace_id": "w", "workspace_name": "W", "dataset_id": "d", "dataset_name": "D"})
    PostLog.from_dict(older).carry_into(again)
    assert (again.unsure_since, again.busy_tries, again.unsure_posted) == (
        "2026-11-21T12:00:05.000Z", 2, Posted(type="Full", tables=("Orders",)))
    assert PostLog.from_dict(None) is None and Posted.from_dict("garbled") is None
