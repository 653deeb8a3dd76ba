"""Benchmark: classify a 100,000-action OPTIMIZE commit, streaming from a local file.

Measures
  (a) memory: tracemalloc peak and ru_maxrss growth while ``classify_version`` streams the commit
      (each in a fresh child process, so earlier work does not hide the growth); goal < 50 MB;
  (b) throughput: ``classify_version`` (LocalLogReader: 1 MiB reads -> iter_lines -> classify_commit) vs a
      plain ``for line in f: json.loads(line)`` loop over the same file, best of several runs; goal >= 0.8x.

Run: ``.venv/bin/python benchmarks/bench_classify.py [--actions N] [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from refresh.detection.deltalog import (  # noqa: E402 - after the path set-up
    LocalLogReader,
    classify_commit,
    classify_version,
    commit_file_name,
)

MB = 1024 * 1024


def _stats(rng: random.Random) -> str:
    low, high = rng.randint(1, 10**6), rng.randint(10**6, 10**7)
    return json.dumps({
        "numRecords": rng.randint(10_000, 2_000_000),
        "minValues": {"order_id": low, "customer_id": rng.randint(1, 9999),
                      "amount": round(rng.random() * 10, 2), "order_ts": "2026-11-01T00:00:03.120Z",
                      "sku": "A-000123"},
        "maxValues": {"order_id": high, "customer_id": rng.randint(10_000, 99_999),
                      "amount": round(rng.random() * 10_000, 2), "order_ts": "2026-11-21T23:59:58.900Z",
                      "sku": "Z-998877"},
        "nullCount": {"order_id": 0, "customer_id": 0, "amount": rng.randint(0, 50), "order_ts": 0, "sku": 3},
        "tightBounds": True,
    }, separators=(",", ":"))


def write_optimize_commit(path: Path, actions: int, seed: int = 7) -> int:
    """Write an OPTIMIZE commit of ``actions`` actions (commitInfo, then removes and adds), line by line."""
    rng = random.Random(seed)
    regions = ["eu", "us", "ap", "latam", None]
    files = actions - 1
    removes = files * 3 // 4
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        out.write(json.dumps({"commitInfo": {
            "timestamp": 1_795_000_000_000, "operation": "OPTIMIZE",
            "operationParameters": {"predicate": "[]", "targetSize": "104857600"}, "readVersion": 41,
            "engineInfo": "delta-rs:py-1.6.6", "clientVersion": "delta-rs.py-1.6.6",
            "operationMetrics": {"numFilesAdded": files - removes, "numFilesRemoved": removes},
        }}, separators=(",", ":")) + "\n")
        for i in range(files):
            day = f"2026-{rng.randint(1, 11):02d}-{rng.randint(1, 28):02d}"
            region = rng.choice(regions)
            part = {"region": region, "order_date": day}
            folder = f"region={region or '__HIVE_DEFAULT_PARTITION__'}/order_date={day}"
            name = f"{folder}/part-{i:05d}-{uuid.UUID(int=rng.getrandbits(128))}-c000.snappy.parquet"
            if i < removes:
                action = {"remove": {
                    "path": name, "dataChange": False, "deletionTimestamp": 1_795_000_000_000,
                    "extendedFileMetadata": True, "partitionValues": part,
                    "size": rng.randint(10_000, 9_000_000), "stats": _stats(rng)}}
            else:
                action = {"add": {
                    "path": name, "partitionValues": part, "size": rng.randint(50_000_000, 99_000_000),
                    "modificationTime": 1_795_000_000_000, "dataChange": False, "stats": _stats(rng),
                    "tags": None, "deletionVector": None, "baseRowId": None, "defaultRowCommitVersion": None,
                    "clusteringProvider": None}}
            line = json.dumps(action, separators=(",", ":"))
            out.write(line + ("\n" if i < files - 1 else ""))  # delta-rs style: no trailing newline
    return path.stat().st_size


def _ours(root: Path) -> float:
    start = time.perf_counter()
    info = classify_version(LocalLogReader(root, "bench"), 0)
    elapsed = time.perf_counter() - start
    assert info is not None and info.data_change is False and info.operation == "OPTIMIZE"
    return elapsed


def _ours_file_lines(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as f:
        info = classify_commit(f, table="bench", version=0)
    elapsed = time.perf_counter() - start
    assert info.data_change is False
    return elapsed


def _plain(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as f:
        for line in f:
            json.loads(line)
    return time.perf_counter() - start


def child_memory(root: str, mode: str) -> None:
    """Child process: one classification, printing memory figures as JSON."""
    table = Path(root)
    if mode == "tracemalloc":
        tracemalloc.start()
        before, _ = tracemalloc.get_traced_memory()
        _ours(table)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(json.dumps({"peak_bytes": peak - before}))
    else:
        # warm up imports and the code path on a tiny commit so only the big one's growth is counted
        with tempfile.TemporaryDirectory() as tmp:
            small = Path(tmp) / "t"
            write_optimize_commit(small / "_delta_log" / commit_file_name(0), 100)
            _ours(small)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _ours(table)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        naive = 0
        if mode == "rss+naive":  # for comparison: reading the whole commit at once
            start_rss = after
            data = (table / "_delta_log" / commit_file_name(0)).read_bytes()
            parsed = [json.loads(x) for x in data.split(b"\n") if x]
            naive = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss
            del parsed, data
        print(json.dumps({"before_kb": before, "after_kb": after, "naive_growth_kb": naive}))


def _run_child(root: Path, mode: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, __file__, "--child", str(root), mode],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    """Generate the commit, measure, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_memory(*args.child)
        return

    print(f"Python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench_classify_") as tmp:
        root = Path(tmp) / "orders"
        commit = root / "_delta_log" / commit_file_name(0)
        size = write_optimize_commit(commit, args.actions)
        print(f"commit: {args.actions:,} actions (OPTIMIZE, dataChange=false), {size / MB:.1f} MiB")

        traced = _run_child(root, "tracemalloc")
        rss = _run_child(root, "rss+naive")
        growth_kb = rss["after_kb"] - rss["before_kb"]
        print("(a) memory while classify_version streams the commit (fresh child process each):")
        print(f"    tracemalloc peak           {traced['peak_bytes'] / MB:8.2f} MiB   (goal < 50 MB)")
        print(f"    ru_maxrss growth           {growth_kb / 1024:8.2f} MiB   "
              f"(from {rss['before_kb'] / 1024:.1f} MiB)")
        print("    for comparison, read + parse the whole file at once: ru_maxrss growth "
              f"{rss['naive_growth_kb'] / 1024:.1f} MiB")

        _plain(commit)  # warm the page cache
        ours, plain, direct = [], [], []
        for _ in range(args.runs):
            plain.append(_plain(commit))
            ours.append(_ours(root))
            direct.append(_ours_file_lines(commit))
        best_ours, best_plain, best_direct = min(ours), min(plain), min(direct)
        print(f"(b) throughput, best of {args.runs} runs:")
        for label, best in (("plain `for line in f: json.loads(line)`", best_plain),
                            ("classify_version (LocalLogReader)", best_ours),
                            ("classify_commit(open(path, 'rb'))", best_direct)):
            print(f"    {label:42s} {best:7.3f} s  {size / MB / best:7.1f} MiB/s  "
                  f"{args.actions / best:10,.0f} lines/s")
        ratio = best_plain / best_ours
        print(f"    throughput ratio ours/plain: {ratio:.2f}x   (goal >= 0.8x)   "
              f"[direct file lines: {best_plain / best_direct:.2f}x]")
        ok = traced["peak_bytes"] < 50 * MB and growth_kb < 50 * 1024 and ratio >= 0.8
        print("RESULT:", "goals met" if ok else "GOALS NOT MET")


if __name__ == "__main__":
    main()
