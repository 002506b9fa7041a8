"""Studies on a Ray cluster: what a job's driver must check, and ``python -m tune submit``.

A study reaches a cluster as a Ray job (the Jobs API behind ``ray job submit``): the project's
code travels as the job's working directory; data, caches and the study folder stay on a file
system every node mounts, found through the job's environment (``cluster/runtime_env.yaml``).
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import yaml

from diffseg.config import ConfigError

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"
UPLOAD_LIMIT = 512 * 2**20  # Ray's working-directory limit (the GCS's largest gRPC message)
UPLOAD_WARN = 100 * 2**20


def in_job() -> bool:
    """True inside a Ray job's driver (the job supervisor sets its config in the environment)."""
    return "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ


def storage_for(storage: str | None) -> str | None:
    """The study storage: ``--storage``, else ``$DIFFSEG_STUDIES``. Under a job it must be given
    and absolute: the job's working directory is a temporary copy on the head node, so a
    default ``studies/`` there would vanish with it and no other node could see it."""
    storage = storage or os.environ.get("DIFFSEG_STUDIES") or None
    if in_job() and (storage is None or not Path(storage).is_absolute()):
        raise ConfigError(f"inside a Ray job the study storage must be an absolute folder every node mounts "
                          f"(--storage /mnt/shared/studies or DIFFSEG_STUDIES in cluster/runtime_env.yaml); got "
                          f"{storage or 'the default studies/ inside the job working directory'}")
    return storage


def load_runtime_env(path: Path = RUNTIME_ENV) -> dict:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or set(data) - {"excludes", "env_vars", "pip", "conda", "py_modules"}:
        raise ConfigError(f"{path}: expected a mapping with excludes and env_vars")
    return data


def upload_size(root: Path, excludes: list[str]) -> int:
    """Bytes of the working directory Ray would upload: everything but the excludes and what
    the project's .gitignore leaves out (Ray honours both)."""
    import pathspec

    patterns = list(excludes)
    if (root / ".gitignore").is_file():
        patterns += (root / ".gitignore").read_text().splitlines()
    spec = pathspec.PathSpec.from_lines("gitwildmatch", patterns)
    total = 0
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if not spec.match_file(f"{rel / d}/")]
        total += sum((Path(folder) / f).stat().st_size for f in files if not spec.match_file(str(rel / f))
                     and (Path(folder) / f).is_file())
    return total


def check_upload(root: Path, excludes: list[str]) -> int:
    size = upload_size(root, excludes)
    if size > UPLOAD_LIMIT:
        raise ConfigError(f"the working directory {root} would upload {size / 2**20:.0f} MiB, above Ray's limit of "
                          f"{UPLOAD_LIMIT / 2**20:.0f} MiB: add the large folders to excludes in {RUNTIME_ENV}")
    return size


def submit(study: str, address: str, storage: str, overrides: list[str], name: str | None = None,
           data_root: str = "", wait: bool = True, runtime_env: Path = RUNTIME_ENV, log=print,
           dataset: str | None = None) -> int:
    """Submit a study as a Ray job; with ``wait``, follow its logs and return 0 on SUCCEEDED."""
    import logging

    from ray.job_submission import JobStatus, JobSubmissionClient

    logging.getLogger("ray").setLevel(logging.ERROR)  # packaging chatter; errors still show

    from .study import STUDY_DIR, check_name, load_study

    env = load_runtime_env(runtime_env)
    storage = storage or env.get("env_vars", {}).get("DIFFSEG_STUDIES", "")
    if not storage or not Path(storage).is_absolute():
        raise ConfigError(f"--storage must be an absolute folder every node of the cluster mounts, got {storage!r}")
    # the study file is checked here, before anything is sent (data paths are the cluster's)
    checked = load_study(study, overrides, data_root, dataset=dataset)
    name = check_name(name or f"{checked.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    study_path = Path(study)
    if study_path.is_file():
        try:
            study_arg = str(study_path.resolve().relative_to(ROOT))
        except ValueError:
            raise ConfigError(f"study file {study} is outside the project {ROOT}, so the job would not have it: "
                              f"put it under {STUDY_DIR}") from None
    else:
        study_arg = study
    size = check_upload(ROOT, env.get("excludes", []))
    entry = ["python", "-m", "tune", "search", study_arg, "--name", name, "--storage", storage]
    entry += ["--set", *overrides] if overrides else []
    entry += ["--data-root", data_root] if data_root else []
    entry += ["--dataset", dataset] if dataset else []
    client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=shlex.join(entry),
        submission_id=f"diffseg-{name}",
        runtime_env={"working_dir": str(ROOT), **env},
        metadata={"study": name, "storage": storage})
    log(f"[submit] job {job_id} on {address} ({size / 2**20:.1f} MiB uploaded): {' '.join(entry)}")
    log(f"[submit] results: {storage}/{name}/ (report.md when it ends; `python -m tune report {name} "
        f"--storage {storage}` on any machine that mounts it)")
    if not wait:
        log(f"[submit] not waiting; follow it with `ray job logs --follow {job_id} --address {address}`")
        return 0
    _follow(client, job_id, log)
    status = client.get_job_status(job_id)
    log(f"[submit] job {job_id} ended: {status}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def _follow(client, job_id: str, log) -> None:
    import asyncio

    async def tail():
        async for lines in client.tail_job_logs(job_id):
            for line in lines.splitlines():
                log(line)

    asyncio.run(tail())
