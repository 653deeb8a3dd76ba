"""The chaos figures, computed from the outside (dev only).

The truth about Power BI is the simulator's own record of refreshes, never the app's rows:

* **lost**: a (commit, dataset) pair for which no refresh of the dataset that STARTED after the
  commit existed reached ``Completed``. ``lost_commits`` counts commits with at least one lost pair.
* **unneeded**: a refresh with no commit of its dataset between the start of the dataset's previous
  Completed refresh and its own start (it refreshed nothing new).
* **stuck**: a dataset whose state in the app's state table still holds a pending or running job
  after the quiet period.
* **non_terminal**: outcome rows not in an end state after the quiet period.
* **without_row**: refreshes the simulator accepted whose request id is in no outcome row.
* **credited_twice** (reported, not part of the goal): request ids that more than one outcome row
  claims (a job credited with a refresh another job started, issue 9 items 1 and 6).
* **misreported** (reported, not part of the goal): rows in an end state whose refresh ended
  differently in Power BI (e.g. Completed in Power BI, Failed in the row; issue 9 item 7).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from refresh.core.routing import compile_glob
from refresh.dev.testing.chaos.env import END_STATES, Commit, DatasetSpec

POWERBI_END = frozenset({"Completed", "Failed", "Cancelled", "Disabled"})


@dataclass
class Figures:
    """What one chaos run (or one scenario of it) measured."""

    commits: int = 0
    pairs: int = 0  # (commit, dataset) pairs that needed a refresh
    lost_commits: int = 0
    lost_pairs: int = 0
    refreshes: int = 0
    unneeded: int = 0
    stuck: list[str] = field(default_factory=list)
    non_terminal: list[str] = field(default_factory=list)
    without_row: list[str] = field(default_factory=list)
    credited_twice: list[str] = field(default_factory=list)
    misreported: list[str] = field(default_factory=list)
    lost_detail: list[str] = field(default_factory=list)

    @property
    def goal_met(self) -> bool:
        return not (self.lost_pairs or self.stuck or self.non_terminal or self.without_row)

    def line(self) -> str:
        return (f"commits {self.commits:4d}  lost {self.lost_commits:3d} ({self.lost_pairs} dataset pairs)  "
                f"refreshes {self.refreshes:3d}  unneeded {self.unneeded:3d}  stuck {len(self.stuck):2d}  "
                f"non-terminal {len(self.non_terminal):2d}  without row {len(self.without_row):2d}  "
                f"credited twice {len(self.credited_twice):2d}  misreported {len(self.misreported):2d}")

    def as_dict(self) -> dict[str, Any]:
        return {"commits": self.commits, "pairs": self.pairs, "lost_commits": self.lost_commits,
                "lost_pairs": self.lost_pairs, "refreshes": self.refreshes, "unneeded": self.unneeded,
                "stuck": self.stuck, "non_terminal": self.non_terminal, "without_row": self.without_row,
                "credited_twice": self.credited_twice,
                "misreported": self.misreported, "lost_detail": self.lost_detail[:50], "goal_met": self.goal_met}


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def listeners(table: str, datasets: Iterable[DatasetSpec]) -> list[str]:
    return [d.key for d in datasets if any(compile_glob(t).fullmatch(table) for t in d.tables)]


def measure(datasets: list[DatasetSpec], commits: list[Commit], refreshes: dict[str, list[dict[str, Any]]],
            rows: list[dict[str, Any]], states: dict[str, dict[str, Any]]) -> Figures:
    """Figures for ``datasets`` (a scenario's, or all) from the truth gathered at the end."""
    keys = {d.key for d in datasets}
    figures = Figures()
    per_dataset: dict[str, list[Commit]] = {k: [] for k in keys}
    for commit in commits:
        targets = [k for k in listeners(commit.table, datasets) if k in keys]
        if not targets:
            continue
        figures.commits += 1
        lost_here = False
        for key in targets:
            per_dataset[key].append(commit)
            figures.pairs += 1
            done = [r for r in refreshes.get(key, []) if r.get("status") == "Completed"
                    and (_epoch(r.get("startTime")) or 0) > commit.at]
            if not done:
                figures.lost_pairs += 1
                lost_here = True
                figures.lost_detail.append(f"{commit.scenario}: {commit.table} v{commit.version} -> {key}")
        figures.lost_commits += lost_here
    for key in sorted(keys):
        previous_completed = float("-inf")
        for refresh in refreshes.get(key, []):
            start = _epoch(refresh.get("startTime")) or 0.0
            figures.refreshes += 1
            if not any(previous_completed < c.at <= start for c in per_dataset[key]):
                figures.unneeded += 1
            if refresh.get("status") == "Completed":
                previous_completed = start
        state = states.get(key) or {}
        if state.get("pending") or state.get("running"):
            what = "running" if state.get("running") else "pending"
            figures.stuck.append(f"{key} ({what} {(state.get(what) or {}).get('job_id', '?')})")
    ours = [r for r in rows if r.get("PartitionKey") in keys]
    for row in ours:
        if row.get("status") not in END_STATES:
            figures.non_terminal.append(f"{row.get('PartitionKey')} job {row.get('job_id')}: {row.get('status')}")
    recorded = {row.get("request_id") for row in rows if row.get("request_id")}
    for key in sorted(keys):
        for refresh in refreshes.get(key, []):
            if refresh.get("requestId") not in recorded:
                figures.without_row.append(f"{key} {refresh.get('requestId')} ({refresh.get('status')})")
    claims: dict[str, list[str]] = {}
    for row in ours:
        if row.get("request_id"):
            claims.setdefault(row["request_id"], []).append(f"{row.get('PartitionKey')} job {row.get('job_id')}")
    figures.credited_twice = [f"{rid} claimed by {', '.join(jobs)}" for rid, jobs in claims.items() if len(jobs) > 1]
    truth = {r.get("requestId"): r.get("status") for key in keys for r in refreshes.get(key, [])}
    for row in ours:
        ended = truth.get(row.get("request_id"))
        if row.get("status") in END_STATES and ended in POWERBI_END and ended != row.get("status"):
            figures.misreported.append(f"{row.get('PartitionKey')} job {row.get('job_id')}: row {row.get('status')}, "
                                       f"Power BI {ended}")
    return figures
