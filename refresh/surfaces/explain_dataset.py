"""``python -m refresh explain --dataset KEY``: why is dataset KEY stale?

Answers as a chain, from the app's own state (read-only; one read of the dataset's state entity, one
per table watermark and one per job row):

1. **commits**: per source table, the newest version the model includes (and its commit time) and the
   versions not in the model yet (with the oldest one's commit time), plus the table's watermark
   (what detection has read, and any error that stops it);
2. **job**: the job those commits are in, pending (due when) or running (since when, Power BI's
   request id), and what it waits for (the outcome row's status and detail: debounce, busy, 429,
   daily limit, the next check);
3. **last end**: how the last job ended (status, Power BI's error text);
4. **freshness**: up to date / catching up / breached, lag and objective (refresh/monitoring/freshness.py).
"""

from __future__ import annotations

from typing import Any

from refresh.jobs.pending import readable_pending, running_of
from refresh.monitoring.freshness import FreshnessRecord, duration_text, freshness_of


def explain_dataset(app: Any, key: str) -> dict[str, Any]:
    """The chain for dataset ``key`` as JSON-able data (``--json``). Raises KeyError for an unknown key."""
    ds = app.config.datasets.get(key)
    if ds is None:
        raise KeyError(f"no dataset {key!r} in the routing config (known: {', '.join(sorted(app.config.datasets))})")
    entity = app.states.get(key)
    record = FreshnessRecord.from_entity(entity)
    slo = ds.freshness_slo_minutes * 60 if getattr(ds, "freshness_slo_minutes", None) else None
    view = freshness_of(record, slo, app.clock.now())
    pending, running = readable_pending(entity), running_of(entity)

    names = set(record.tables)
    for job in (pending, running.job if running else None):
        if job is not None:
            names |= set(job.sources)
    commits = []
    for name in sorted(names):
        entry = record.tables.get(name)
        mark = app.watermarks.get(name)
        commits.append({
            "table": name,
            "included_version": entry.included_version if entry else None,
            "data_as_of": entry.included_commit_time if entry else None,
            "not_included": [{"versions": [s.first_version, s.last_version], "oldest_commit": s.oldest,
                              "newest_commit": s.newest} for s in (entry.unincluded if entry else [])],
            "detected_up_to": mark.version if mark else None,
            "detection_error": (mark.error or None) if mark else None,
        })

    jobs = []
    if running is not None:
        row = app.outcomes.get(running.job_id) or {}
        jobs.append({"state": "running", "job_id": running.job_id, "started_at": running.started_at,
                     "request_id": running.refresh_id, "status": row.get("status"),
                     "waits_for": _waits_for(row, "running"), "sources": _sources(running.job)})
    if pending is not None:
        row = app.outcomes.get(pending.job_id) or {}
        jobs.append({"state": "pending", "job_id": pending.job_id, "due_at": pending.due_at,
                     "status": row.get("status"), "waits_for": _waits_for(row, "pending", pending.due_at),
                     "sources": _sources(pending)})
    st = record.state
    last = None
    if st.last_job_id:
        last = {"job_id": st.last_job_id, "status": st.last_status, "ended_at": st.last_ended_at,
                "error_code": st.last_error_code, "error_message": st.last_error_message,
                "failing_since": st.failing_since, "failures": st.failures}
    return {"dataset": key, "workspace": ds.workspace, "dataset_name": ds.dataset, "commits": commits,
            "jobs": jobs, "last_end": last, "freshness": view.to_json()}


def _sources(job: Any) -> dict[str, list[int]]:
    if job is None:
        return {}
    return {t: [s.first_version, s.last_version] for t, s in job.sources.items()}


def _waits_for(row: dict[str, Any], state: str, due_at: str | None = None) -> str:
    detail = row.get("detail")
    if detail:
        when = row.get("next_attempt_at")
        return f"{detail}{' (next attempt ' + when + ')' if when else ''}"
    if state == "running":
        return "Power BI to finish the refresh (the worker checks on it)"
    return f"its due time {due_at} (debounce / max delay)" if due_at else "the worker"


def dataset_lines(chain: dict[str, Any]) -> list[str]:
    """The chain as text, one fact per line."""
    f = chain["freshness"]
    out = [f"dataset {chain['dataset']} ({chain['workspace']} / {chain['dataset_name']}): {f['text']}"]
    out.append("1. commits")
    if not chain["commits"]:
        out.append("   no commit of its tables seen since the app started tracking freshness")
    for c in chain["commits"]:
        have = (f"in the model up to v{c['included_version']} (committed {c['data_as_of']})"
                if c["included_version"] is not None else "nothing of it refreshed yet")
        out.append(f"   {c['table']}: {have}")
        for span in c["not_included"]:
            first, last = span["versions"]
            versions = f"v{first}" if first == last else f"v{first}..v{last}"
            out.append(f"     not in the model: {versions}, oldest committed {span['oldest_commit']}")
        if c["detection_error"]:
            out.append(f"     detection stopped at v{c['detected_up_to']}: {c['detection_error']}")
    out.append("2. job")
    if not chain["jobs"]:
        out.append("   none pending or running"
                   + (" although commits are missing: the sweep (every 5 min) re-reads the tables"
                      if f["lag_seconds"] else ""))
    for job in chain["jobs"]:
        srcs = ", ".join(f"{t} v{a}..v{b}" for t, (a, b) in job["sources"].items()) or "no commits (requested)"
        out.append(f"   {job['state']} job {job['job_id']} ({job.get('status') or '?'}): {srcs}")
        out.append(f"     waits for {job['waits_for']}")
    out.append("3. last end")
    last = chain["last_end"]
    if last is None:
        out.append("   no job has ended yet")
    else:
        error = f": {last['error_code'] or ''} {last['error_message'] or ''}".rstrip() \
            if last["error_code"] or last["error_message"] else ""
        out.append(f"   job {last['job_id']} ended {last['status']} at {last['ended_at']}{error}")
        if last["failing_since"]:
            out.append(f"   failing since {last['failing_since']} ({last['failures']} failed job(s) in a row)")
    out.append("4. freshness")
    objective = f", objective {duration_text(f['slo_seconds'])}" if f["slo_seconds"] else ", no objective set"
    out.append(f"   {f['state']}: lag {duration_text(f['lag_seconds'])}{objective}; data as of "
               f"{f['data_as_of']['overall'] or 'unknown'}; last refresh {f['refreshed_at'] or 'never'}")
    return out

