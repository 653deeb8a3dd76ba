"""Project files agree with each other: dependencies, queue encoding, settings, README commands."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from refresh.core.settings import SETTINGS, Settings, SettingsError
from refresh.jobs import messages

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...]
    via_project: bool  # a direct dependency ("# via powerbi-delta-refresh (pyproject.toml)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock(path: Path) -> dict[str, Pin]:
    """The pins of a hashed lock written by ./scripts/lock.sh (uv pip compile --generate-hashes)."""
    pins: dict[str, Pin] = {}
    name = None
    for block in re.split(r"\n(?=\S)", path.read_text(encoding="utf-8")):
        if block.startswith("#") or not block.strip():
            continue
        head = block.split("\\", 1)[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", head)
        assert match, f"{path.name}: not an exact pin: {head!r}"
        name = _canonical(match.group(1))
        hashes = tuple(re.findall(r"--hash=sha256:([0-9a-f]{64})", block))
        pins[name] = Pin(name, match.group(3), hashes, "powerbi-delta-refresh (pyproject.toml)" in block)
    return pins


def _declared(requirements: list[str]) -> dict[str, Requirement]:
    return {_canonical(r.name): r for r in map(Requirement, requirements)}


def test_lock_pins_exactly_the_declared_dependencies_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _declared(project["dependencies"])
    lock = _lock(ROOT / "requirements.txt")
    # Every pin has hashes (pip then checks every file of the remote build), and the direct
    # dependencies of the lock are exactly pyproject's: adding or removing one without
    # ./scripts/lock.sh fails here.
    assert all(pin.hashes for pin in lock.values())
    assert {n for n, pin in lock.items() if pin.via_project} == set(declared)
    for name, requirement in declared.items():
        assert requirement.specifier.contains(lock[name].version, prereleases=True), \
            f"{name}: the lock pins {lock[name].version}, outside {requirement.specifier} (run ./scripts/lock.sh)"
    for required in ("azure-functions", "azurefunctions-extensions-bindings-blob", "azure-identity",
                     "azure-storage-blob", "azure-data-tables", "requests"):
        assert required in declared
    # Nothing yanked or known-bad as a floor: 1.21.1 (the BlobSource.EVENT_GRID fix) is yanked on PyPI.
    assert not declared["azure-functions"].specifier.contains("1.21.1")
    assert lock["azure-functions"].version != "1.21.1"
    assert "azure-functions-worker" not in lock  # the platform provides the worker


def test_dev_lock_has_the_runtime_pins_and_the_dev_tools():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = _lock(ROOT / "requirements.txt"), _lock(ROOT / "requirements-dev.txt")
    assert all(pin.hashes for pin in dev.values())
    for name, pin in runtime.items():
        assert dev[name].version == pin.version, f"{name}: CI would test {dev[name].version}, Azure runs {pin.version}"
    wanted = set(_declared(project["dependencies"])) | set(_declared(project["optional-dependencies"]["dev"]))
    assert {n for n, pin in dev.items() if pin.via_project} == wanted


def test_the_environment_is_installed_from_the_lock():
    """setup.sh (and so CI) installs requirements-dev.txt with --require-hashes: what runs the tests
    is exactly the lock."""
    from importlib.metadata import PackageNotFoundError, version

    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert re.search(r"--require-hashes[^\n]*\\\n\s*-r requirements-dev\.txt", setup)
    for workflow in ("ci.yml", "deploy.yml"):
        text = (ROOT / ".github" / "workflows" / workflow).read_text()
        assert "requirements-dev.txt" in text and "run: ./scripts/test.sh" in text
    mismatched = {}
    for name, pin in _lock(ROOT / "requirements-dev.txt").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = None
        if installed != pin.version:
            mismatched[name] = (pin.version, installed)
    assert not mismatched, f"run ./scripts/setup.sh: lock vs installed {mismatched}"


def test_lock_script_is_the_one_command():
    script = (ROOT / "scripts" / "lock.sh").read_text()
    assert "--generate-hashes" in script and "-o requirements.txt" in script and "-o requirements-dev.txt" in script
    assert "--python-version 3.11" in script
    for lock in ("requirements.txt", "requirements-dev.txt"):
        assert "#    ./scripts/lock.sh" in (ROOT / lock).read_text().splitlines()[1]


def test_queue_encoding_matches_host_json():
    host = json.loads((ROOT / "host.json").read_text())
    # producers write base64; the host hands it over as it is and the app decodes (refresh/jobs/messages.py)
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
