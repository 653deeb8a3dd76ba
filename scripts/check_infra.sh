#!/usr/bin/env bash
# Static security scan of the infrastructure and the workflows with checkov, fully offline.
#
#   ./scripts/check_infra.sh
#
# checkov pins many dependencies, so it lives in its own virtual environment, .venv-checkov in the
# repo root, created on first use and reused while it holds CHECKOV_VERSION. Scans:
#   infra/              --framework bicep    (every Bicep file; checkov's pycep parser)
#   infra/              --framework secrets  (no keys, tokens or connection strings)
#   .github/workflows/  --framework github_actions
# Exit status is non-zero on any failed check, on any file checkov cannot parse (checkov itself
# reports parse errors but exits 0), and when the Bicep or workflow scan checks nothing at all. Skipped
# checks must be justified inline: `//checkov:skip=CKV_...:reason`; they are listed with the reason.
set -euo pipefail

CHECKOV_VERSION=3.3.30

root=$(cd -- "$(dirname -- "$0")/.." && pwd)
venv="$root/.venv-checkov"
python=${PYTHON:-python3}

installed_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("checkov"))' 2>/dev/null || true
}

mkdir -p "$venv"
(
    # One installer at a time (parallel test runs share the venv).
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$venv/.install.lock"
        flock 9
    fi
    if [ "$(installed_version)" != "$CHECKOV_VERSION" ]; then
        echo "check_infra: installing checkov $CHECKOV_VERSION into .venv-checkov (once)" >&2
        log="$venv/install.log"
        if ! { "$python" -m venv "$venv" &&
               "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
                   "checkov==$CHECKOV_VERSION"; } >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            echo "check_infra: could not install checkov $CHECKOV_VERSION (log: $log)" >&2
            exit 1
        fi
    fi
)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

scan() {  # scan NAME DIR FRAMEWORK
    local status=0
    (cd "$root" && "$venv/bin/checkov" -d "$2" --framework "$3" --skip-download --compact \
        --output json) >"$out/$1.json" 2>"$out/$1.err" || status=$?
    # 0: clean, 1: failed checks (reported below); anything else is checkov itself failing.
    if [ "$status" -gt 1 ]; then
        echo "check_infra: checkov crashed on $2 ($3), exit $status:" >&2
        cat "$out/$1.err" >&2
        exit "$status"
    fi
}

# The three scans run in parallel (checkov spends most of its time starting up).
pids=()
scan bicep infra bicep & pids+=($!)
scan secrets infra secrets & pids+=($!)
scan actions .github/workflows github_actions & pids+=($!)
for pid in "${pids[@]}"; do
    wait "$pid"
done

"$venv/bin/python" - "$out" <<'PY'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
problems = 0
for name, require_resources in (("bicep", True), ("secrets", False), ("actions", True)):
    text = (out / f"{name}.json").read_text().strip()
    data = json.loads(text) if text else []
    reports = data if isinstance(data, list) else [data]
    # A framework with nothing to scan prints a bare summary without results.
    summary = {"passed": 0, "failed": 0, "skipped": 0, "parsing_errors": 0, "resource_count": 0}
    results = {"failed_checks": [], "skipped_checks": [], "parsing_errors": []}
    for report in reports:
        if "summary" in report:
            for key in summary:
                summary[key] += report["summary"].get(key, 0)
            for key in results:
                results[key] += report.get("results", {}).get(key, [])
        else:
            for key in summary:
                summary[key] += report.get(key, 0)
    print(f"{name}: passed {summary['passed']}, failed {summary['failed']}, skipped {summary['skipped']}, "
          f"parsing errors {summary['parsing_errors']}, resources {summary['resource_count']}")
    for check in results["failed_checks"]:
        lines = check.get("file_line_range") or ["?", "?"]
        print(f"  FAILED {check['check_id']} {check['check_name']}\n"
              f"         {check['resource']} in {check['file_path']}:{lines[0]}-{lines[1]}")
    for check in results["skipped_checks"]:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        print(f"  skipped {check['check_id']} on {check['resource']} ({check['file_path']}): {reason}")
        if not reason.strip():
            print("  ^ a skip without a reason is not allowed")
            problems += 1
    for path in results["parsing_errors"]:
        print(f"  PARSE ERROR {path}")
    problems += summary["failed"] + summary["parsing_errors"]
    if require_resources and summary["passed"] + summary["failed"] + summary["skipped"] == 0:
        print(f"  {name}: nothing was scanned")
        problems += 1
if problems:
    print(f"check_infra: {problems} problem(s)")
    sys.exit(1)
print("check_infra: OK")
PY
