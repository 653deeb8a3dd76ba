"""Benchmark: cold start.

1. Import time of ``function_app`` in a fresh process against importing only the SDKs it needs
   (azure.functions, azure.storage.blob, azure.data.tables, azure.identity, requests) in a fresh
   process. Goal: at most 1.2x.
2. A fresh process importing ``function_app`` and handling one commit event end to end against
   Azurite (the App is built on first use: clients, table and queue checks, config load).

    .venv/bin/python benchmarks/bench_cold_start.py [--runs 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake

from refresh.dev.testing.azurite import Azurite

ROOT = Path(__file__).resolve().parent.parent
SDKS = "import azure.functions, azure.storage.blob, azure.data.tables, azure.identity, requests"
TIMED = "import time; t0 = time.perf_counter(); {stmt}; print(time.perf_counter() - t0)"

CHILD = r"""
import time
t0 = time.perf_counter()
import function_app
t1 = time.perf_counter()
from refresh.dev.testing import events
fns = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
event = events.blob_created(BASE, CONTAINER, "sales/fact_orders/_delta_log/00000000000000000001.json")
fns["on_lake_event"](events.to_function_event(event))
t2 = time.perf_counter()
from refresh.core.context import get_app
job = get_app().states.pending("sales")
assert job is not None and job.sources["sales/fact_orders"].last_version == 1, job
print(json.dumps({"import": t1 - t0, "handled": t2 - t0}))
"""


def timed(stmt: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        res = subprocess.run([sys.executable, "-X", "frozen_modules=on", "-c", TIMED.format(stmt=stmt)],
                             cwd=ROOT, capture_output=True, text=True, check=True)
        out.append(float(res.stdout.strip()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    # interleave to share the machine's noise between both
    ours, sdk = [], []
    for _ in range(args.runs):
        ours += timed("import function_app", 1)
        sdk += timed(SDKS, 1)
    m_ours, m_sdk = statistics.median(ours), statistics.median(sdk)
    print(f"import function_app: median {m_ours * 1000:.0f} ms (min {min(ours) * 1000:.0f})")
    print(f"import the SDKs only: median {m_sdk * 1000:.0f} ms (min {min(sdk) * 1000:.0f})")
    print(f"RESULT import_ratio={m_ours / m_sdk:.2f} (goal <= 1.2)")

    with Azurite() as azurite, tempfile.TemporaryDirectory() as tmp:
        from azure.storage.blob import BlobServiceClient

        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"datasets": {"sales": {
            "workspace": "W", "dataset": "Sales", "sources": [{"table": "sales/fact_orders"}]}}}))
        handled = []
        for i in range(max(3, args.runs // 2)):
            container = f"gold{i}cold"
            BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)
            uri = f"az://{container}/sales/fact_orders"
            for n in range(2):
                write_deltalake(uri, pa.table({"id": [n]}), mode="append", storage_options=azurite.deltalake_options())
            env = {**os.environ, "AzureWebJobsStorage": azurite.connection_string,
                   "LAKE_STORAGE": azurite.connection_string, "GOLD_CONTAINER": container,
                   "REFRESH_QUEUE": f"jobs-{i}", "STATE_TABLE": f"State{i}x", "OUTCOMES_TABLE": f"Out{i}x",
                   "REFRESH_CONFIG": str(config)}
            code = (f"import json\nBASE = 'http://127.0.0.1:{azurite.blob_port}/devstoreaccount1'\n"
                    f"CONTAINER = '{container}'\n" + CHILD)
            res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                                 text=True)
            if res.returncode:
                raise SystemExit(res.stderr)
            handled.append(json.loads(res.stdout.strip().splitlines()[-1]))
        h = statistics.median(x["handled"] for x in handled)
        imp = statistics.median(x["import"] for x in handled)
        print(f"fresh process, import + first commit event handled end to end: median {h * 1000:.0f} ms "
              f"(of which import {imp * 1000:.0f} ms), {len(handled)} runs")
        print(f"RESULT cold_event_ms={h * 1000:.0f}")


if __name__ == "__main__":
    main()
