"""Issue 6: ``MEDCORE_DAGSTER_EXECUTOR=celery`` runs our steps in a real Celery worker.

The test starts a real Redis (broker and result backend, 127.0.0.1, no persistence) and a real PostgreSQL
(the documented shared instance storage, fixture from test_scale_switch.py), then a real ``celery`` worker
process for ``dagster_celery.app`` with the command docs/pipelines.md gives, and materialises
raw_dicom -> series_index -> nifti_volumes of one synthetic study through ``dagster asset materialize`` on
our Definitions. Every step must start in the worker process, and the files must be on disk.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from pipelines.executors import CELERY_BROKER_ENV, EXECUTOR_ENV, celery_config, select_executor

from .test_scale_switch import PROJECT, _free_port, _missing, _sql, _unavailable, pg_home, postgres_url, project  # noqa: F401 (fixtures)

STEPS = ("raw_dicom", "series_index", "nifti_volumes")
WORKER = "medcore-test"


def _wait_for(ready, what: str, proc: subprocess.Popen, log: Path, deadline_s: float = 60.0) -> None:
    """Poll ``ready()`` until true; fail naming ``what`` with the log if ``proc`` dies or the deadline passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    pytest.fail(f"{what} not ready after {deadline_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="module")
def redis_url():
    """A throw-away redis-server on 127.0.0.1 (no RDB/AOF, own folder); yields its URL."""
    server = shutil.which("redis-server")
    if not server:
        _unavailable("redis-server missing (Debian: apt-get install -y redis-server)")
    if _missing("dagster_celery"):
        _unavailable("dagster-celery not installed (pip install -e '.[scale]')")
    root = Path(tempfile.mkdtemp(prefix="medcore-redis-"))
    port, log = _free_port(), root / "redis.log"
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(root), "--logfile", str(log), "--daemonize", "no"])
    try:
        log.touch()
        _wait_for(lambda: _answers_ping(port), "redis-server", proc, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def celery_worker(redis_url, pg_home, project, tmp_path):
    """A real Celery worker for dagster-celery, started as docs/pipelines.md says; yields (process, env, log)."""
    params_file, _ = project
    # DAGSTER_HOME and DAGSTER_PG_URL come from pg_home; the worker loads our code from the project root
    env = {**os.environ, EXECUTOR_ENV: "celery", CELERY_BROKER_ENV: redis_url, "MEDCORE_PARAMS": str(params_file)}
    env.pop("MEDCORE_CELERY_BACKEND", None)  # the default: the broker's Redis
    log = tmp_path / "worker.log"
    celery = str(Path(sys.executable).with_name("celery"))
    # --pool solo: tasks run in this very process, so its pid identifies the steps it executed
    with open(log, "w") as out:
        proc = subprocess.Popen([celery, "-A", "dagster_celery.app", "-b", redis_url, "--result-backend", redis_url,
                                 "worker", "-Q", "dagster", "--pool", "solo", "--loglevel", "INFO",
                                 "-n", f"{WORKER}@%h", "--without-gossip", "--without-mingle"],
                                cwd=PROJECT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: " ready." in log.read_text(), "celery worker", proc, log)
        yield proc, env, log
    finally:
        _stop(proc)


def test_celery_config_comes_from_the_environment():
    assert celery_config({}) == {"broker": "redis://localhost:6379/0", "backend": "redis://localhost:6379/0"}
    # set variables are referenced, not copied: resolved at run time and never shown in the UI
    assert celery_config({CELERY_BROKER_ENV: "redis://broker:6379/2"}) == {
        "broker": {"env": CELERY_BROKER_ENV}, "backend": {"env": CELERY_BROKER_ENV}}
    assert celery_config({CELERY_BROKER_ENV: "x", "MEDCORE_CELERY_BACKEND": "y"})["backend"] == {
        "env": "MEDCORE_CELERY_BACKEND"}


def test_celery_executor_runs_our_steps_in_the_worker(celery_worker, pg_home, postgres_url, project):
    from pipelines.params import load_params
    from pipelines.steps.layout import Layout

    worker, env, worker_log = celery_worker
    params_file, keys = project
    key = keys[0]
    layout = Layout.from_params(load_params(params_file))
    outputs = (layout.raw_manifest(key), layout.index_dir(key) / "series_index.parquet", layout.converted_dir(key))
    assert not any(p.exists() for p in outputs), "outputs exist before the run"
    assert select_executor("celery").name == "celery"
    with DagsterInstance.from_config(str(pg_home)) as instance:
        instance.add_dynamic_partitions("study", [key])

    dagster = str(Path(sys.executable).with_name("dagster"))
    launcher = subprocess.run([dagster, "asset", "materialize", "-m", "pipelines.definitions",
                               "--select", ",".join(STEPS), "--partition", key],
                              cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180)
    assert launcher.returncode == 0, (launcher.stdout[-3000:] + launcher.stderr[-3000:]
                                      + worker_log.read_text()[-3000:])

    runs = _sql(postgres_url, "SELECT r.run_id, r.status FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
                "WHERE t.key = 'dagster/partition' AND t.value = %s", key)
    assert len(runs) == 1 and runs[0][1] == "SUCCESS", runs
    with DagsterInstance.from_config(str(pg_home)) as instance:
        events = [e.dagster_event for e in instance.all_logs(runs[0][0]) if e.dagster_event is not None]

    def of(kind: DagsterEventType) -> list:
        return [e for e in events if e.event_type == kind]

    (run_start,) = of(DagsterEventType.RUN_START)
    step_pids = {e.step_key: e.pid for e in of(DagsterEventType.STEP_START)}
    assert set(STEPS) <= set(step_pids)  # the assets' steps, plus the asset checks on them
    assert set(step_pids.values()) == {worker.pid} and run_start.pid != worker.pid
    engine = [e.event_specific_data.metadata for e in of(DagsterEventType.ENGINE_EVENT)
              if (e.message or "").endswith("in celery worker")]
    assert sorted(m["step_keys"].value for m in engine) == sorted(step_pids)
    assert {m["Celery worker"].value.split("@")[0] for m in engine} == {WORKER}
    assert {e.step_key for e in of(DagsterEventType.STEP_SUCCESS)} == set(step_pids)
    assert {e.step_key for e in of(DagsterEventType.ASSET_MATERIALIZATION)} == set(STEPS)
    assert worker_log.read_text().count("Task execute_plan[") == 2 * len(step_pids)  # received + succeeded

    assert all(p.exists() for p in outputs), [str(p) for p in outputs if not p.exists()]
    assert list(layout.converted_dir(key).rglob("*.nii.gz")), "no NIfTI written by the worker"
