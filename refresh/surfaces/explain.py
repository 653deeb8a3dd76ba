"""``python -m refresh explain TABLE``: why did (or didn't) a commit refresh a report?
``python -m refresh explain --dataset KEY``: why is dataset KEY stale? (refresh/surfaces/explain_dataset.py)

TABLE is a local folder (a table root) or a table path inside the gold container, read through the
``LAKE_STORAGE`` connection. Prints one line per commit: version, operation, whether it changed
data, the partitions it touched, and the datasets (with model tables) it would refresh under the
current routing config; ``--json`` prints the same as a JSON array.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from refresh.core.routing import ConfigError, RoutingConfig, load_config
from refresh.core.settings import LAKE_STORAGE, Settings, SettingsError
from refresh.detection.deltalog import LocalLogReader, LogReader, MalformedCommit, classify_commit


def explain_rows(reader: LogReader, table_path: str, config: RoutingConfig,
                 from_version: int | None = None) -> list[dict[str, Any]]:
    """One dict per commit with exactly the ``--json`` keys (plus nothing else)."""
    rows = []
    routes = config.routes_for(table_path)
    mapping: dict[str, str] = {}
    after = None if from_version is None else from_version - 1
    for version in reader.commit_versions(after=after):
        lines = reader.open_commit(version)
        if lines is None:
            continue
        info = classify_commit(lines, table=table_path, version=version, column_mapping=mapping)
        mapping = dict(info.column_mapping)
        row = info.to_json()
        rows.append({
            "version": row["version"], "operation": row["operation"], "timestamp": row["timestamp"],
            "data_change": row["data_change"], "partitions": row["partitions"],
            "datasets": [key for key, _ in routes] if info.data_change else [],
            "_model_tables": {key: sorted(t) if t else None for key, t in routes} if info.data_change else {},
        })
    return rows


def _text(row: dict[str, Any]) -> str:
    parts = ",".join(f"{k}={v}" for p in row["partitions"][:3] for k, v in p.items()) or "-"
    if len(row["partitions"]) > 3:
        parts += f" (+{len(row['partitions']) - 3} more)"
    if row["data_change"]:
        targets = ", ".join(
            f"{key} [{'+'.join(tables) if tables else 'whole model'}]"
            for key, tables in row["_model_tables"].items()
        ) or "no dataset listens to this table"
    else:
        targets = "nothing (no data change)"
    op = row["operation"] or "(no operation)"
    return f"v{row['version']:<6} {op:<22} data_change={'yes' if row['data_change'] else 'no ':<3} " \
           f"partitions={parts}  ->  {targets}"


def _reader_for(table: str, table_path: str | None, settings: Settings) -> tuple[LogReader, str]:
    local = Path(table)
    if local.is_dir():
        if not (local / "_delta_log").is_dir():
            raise SystemExit(f"explain: {table} is a folder without a _delta_log/ (not a Delta table root)")
        if table_path is None:
            parts = local.resolve().parts
            gold = settings.gold_container
            table_path = "/".join(parts[parts.index(gold) + 1:]) if gold in parts else local.name
        return LocalLogReader(local, table_path), table_path
    from refresh.core.connections import blob_service
    from refresh.detection.deltalog import BlobLogReader

    path = table.strip("/")
    if path.startswith(settings.gold_container + "/"):
        path = path[len(settings.gold_container) + 1:]
    container = blob_service(LAKE_STORAGE, settings.storage_timeout).get_container_client(settings.gold_container)
    return BlobLogReader(container, path), table_path or path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refresh explain", description=__doc__.splitlines()[0])
    parser.add_argument("table", nargs="?", help="a local table folder, or a table path inside the gold container")
    parser.add_argument("--dataset", default=None,
                        help="a dataset key: why is it stale? (its newest commits, their job, freshness)")
    parser.add_argument("--from-version", type=int, default=None, help="first version to show")
    parser.add_argument("--json", action="store_true", help="print a JSON array")
    parser.add_argument("--table-path", default=None,
                        help="path of the table inside the gold container, for routing a local folder")
    parser.add_argument("--config", default=None, help="routing config file (default: REFRESH_CONFIG)")
    args = parser.parse_args(argv)
    if args.dataset is not None:
        return _explain_dataset(args.dataset, args.config, args.json)
    if args.table is None:
        parser.error("give a TABLE or --dataset KEY")
    try:
        settings = Settings.from_env()
        config = load_config(args.config or settings.refresh_config)
        reader, table_path = _reader_for(args.table, args.table_path, settings)
        rows = explain_rows(reader, table_path, config, args.from_version)
    except (ConfigError, SettingsError, MalformedCommit) as exc:
        print(f"explain: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], indent=2))
    else:
        if not rows:
            print(f"{table_path}: no commits found")
        for row in rows:
            print(_text(row))
    return 0


def _explain_dataset(key: str, config_path: str | None, as_json: bool) -> int:
    from refresh.core.context import App
    from refresh.surfaces.explain_dataset import dataset_lines, explain_dataset

    try:
        settings = Settings.from_env()
        config = load_config(config_path or settings.refresh_config)
        chain = explain_dataset(App(settings, config=config), key)
    except (ConfigError, SettingsError, KeyError) as exc:
        print(f"explain: {str(exc).strip(chr(39))}", file=sys.stderr)
        return 1
    print(json.dumps(chain, indent=2) if as_json else "\n".join(dataset_lines(chain)))
    return 0
