"""Shared fixtures: real data from ../shared/data, a per-session cache, small configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from factories import tiny
from diffseg.data.sources import data_root


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    os.environ["DIFFSEG_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets. In CI they are always there, so a missing folder fails, never skips."""
    root = data_root()
    if not (root / "glas").is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real data missing at {root} in CI (set DIFFSEG_DATA)")
        pytest.skip(f"real data not found at {root}")
    return root


@pytest.fixture
def tiny_cfg():
    """Fast enough for unit tests: 32x32 synthetic images, width 4 (tests/factories.py)."""
    return tiny()


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (starting one costs 4-6 s). HOME, TMPDIR and
    RAY_TMPDIR point at a fresh short folder (socket paths have a length limit), so nothing
    leaks between sessions. Yields the cluster address for driver subprocesses."""
    import shutil
    import tempfile

    import ray  # a dependency: never skipped
    base = Path(tempfile.mkdtemp(prefix="dsr", dir="/tmp"))
    for var, sub in (("HOME", "home"), ("TMPDIR", "tmp"), ("RAY_TMPDIR", "tmp")):
        (base / sub).mkdir(exist_ok=True)
        os.environ[var] = str(base / sub)
    ray.init(num_cpus=2, include_dashboard=True, _temp_dir=str(base / "ray"), log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    shutil.rmtree(base, ignore_errors=True)
