"""Project files agree with each other: dependencies, queue encoding, settings, README commands."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from refresh import messages
from refresh.settings import SETTINGS, Settings, SettingsError

ROOT = Path(__file__).resolve().parent.parent


def _requirement_names(lines: list[str]) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()
            found[name] = line.replace(" ", "")
    return found


def test_requirements_txt_matches_pyproject_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _requirement_names(project["dependencies"])
    pinned = _requirement_names((ROOT / "requirements.txt").read_text().splitlines())
    assert declared == pinned
    for required in ("azure-functions", "azure-identity", "azure-storage-blob", "azure-data-tables", "requests"):
        assert required in declared


def test_queue_encoding_matches_host_json():
    host = json.loads((ROOT / "host.json").read_text())
    # producers write base64; the host hands it over as it is and the app decodes (refresh/messages.py)
    assert host["extensions"]["queues"]["messageEncoding"] == messages.HOST_MESSAGE_ENCODING == "none"
    assert messages.MESSAGE_ENCODING == "base64"


def test_azurite_is_pinned_with_a_lock_file():
    package = json.loads((ROOT / "package.json").read_text())
    assert package["devDependencies"]["azurite"] == "3.35.0"
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/azurite"]["version"] == "3.35.0"


def test_local_settings_sample_names_only_known_settings():
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())
    known = {s.name for s in SETTINGS} | {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsStorage", "LAKE_STORAGE",
                                          "AzureWebJobsFeatureFlags"}
    assert set(sample["Values"]) <= known
    assert sample["IsEncrypted"] is False


def test_every_setting_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    for setting in SETTINGS:
        assert f"`{setting.name}`" in readme, setting.name


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in readme
    assert re.search(r"^\./scripts/test\.sh\s*$", ci, re.M)


def test_settings_fail_fast_naming_the_setting():
    import pytest

    with pytest.raises(SettingsError, match="REFRESH_QUEUE"):
        Settings.from_env({"REFRESH_QUEUE": "Bad_Name"})
    with pytest.raises(SettingsError, match="POWERBI_API_URL"):
        Settings.from_env({"POWERBI_API_URL": "http://api.example.com"})
    with pytest.raises(SettingsError, match="SWEEP_CONCURRENCY"):
        Settings.from_env({"SWEEP_CONCURRENCY": "many"})
    defaults = Settings.from_env({})
    assert defaults.gold_container == "gold" and defaults.refresh_queue == "refresh-jobs"


def test_function_app_imports_without_any_setting(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AzureWebJobs", "LAKE_", "REFRESH_"))}
    code = ("import function_app; "
            "print(' '.join(sorted(f.get_function_name() for f in function_app.app.get_functions())))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == sorted([
        "on_delta_commit", "on_lake_event", "sweep_delta_logs", "run_refresh_job", "on_refresh_poison",
        "run_schedules", "request_refresh", "get_refresh", "list_datasets", "dataset_history", "health",
        "status_page",
    ])
