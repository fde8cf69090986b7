"""A SIGKILLed run must not stay STARTED (issue 6): pipelines/recovery.py against a real SQLite Dagster
instance whose dagster.yaml is the project's (so its run_monitoring block is validated too)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.recovery import (
    ALIVE,
    DEAD,
    PROCESS_TAG,
    UNKNOWN,
    Machine,
    ProcessRecord,
    process_tags,
    process_verdict,
    recover_dead_runs,
)

PROJECT = Path(__file__).resolve().parents[2]
CHILD = ("import sys; from dagster import DagsterInstance; from pipelines.demo import run_pipeline; "
         "from pipelines.params import load_params; run_pipeline(load_params(sys.argv[1]), DagsterInstance.get())")
UNFINISHED = ("NOT_STARTED", "STARTING", "STARTED")


@pytest.fixture
def project(request, tmp_path, deid_key, new_project, monkeypatch):
    """A project with two synthetic studies and a DAGSTER_HOME holding the project's dagster.yaml
    (``max_runtime_seconds`` replaced by the test's parameter, if any)."""
    from dagster import DagsterInstance

    from medcore.data.synthetic import write_synthetic_studies

    root = tmp_path / "project"
    params_file = new_project(root)
    write_synthetic_studies(root / "inbox", n_patients=2, seed=3, shape=(40, 40, 20))
    home = (root / "dagster_home").resolve()
    home.mkdir()
    config = (PROJECT / "dagster_home" / "dagster.yaml").read_text()
    max_runtime = getattr(request, "param", None)
    if max_runtime is not None:
        config, n = re.subn(r"max_runtime_seconds: \d+", f"max_runtime_seconds: {max_runtime}", config)
        assert n == 1, "dagster_home/dagster.yaml: run_monitoring.max_runtime_seconds not found"
    (home / "dagster.yaml").write_text(config)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    env = {**os.environ, "MEDCORE_DEID_KEY": deid_key, "OMP_NUM_THREADS": "1"}
    with DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_runtime_seconds > 0
        yield {"params_file": params_file, "env": env, "instance": instance}


def _unfinished(instance) -> list:
    from dagster import DagsterRunStatus, RunsFilter

    return [r.dagster_run for r in instance.get_run_records(
        filters=RunsFilter(statuses=[DagsterRunStatus(s) for s in UNFINISHED]))]


def _freeze_while_started(proc: subprocess.Popen, instance, timeout: float = 180.0):
    """SIGSTOP the child's process group while one of its runs is STARTED; return that run."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "the pipeline ended before any of its runs was seen STARTED"
        if any(r.status.value == "STARTED" for r in _unfinished(instance)):
            os.killpg(proc.pid, signal.SIGSTOP)
            started = [r for r in _unfinished(instance) if r.status.value == "STARTED"]
            if started:
                return started[0]
            os.killpg(proc.pid, signal.SIGCONT)  # it ended between the two reads: wait for the next run
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("no run was seen STARTED in time")


def _failure_messages(instance, run_id: str) -> list[str]:
    from dagster import DagsterEventType

    return [e.dagster_event.message or "" for e in instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)]


def _start(project) -> subprocess.Popen:
    """``run_pipeline`` (the demo's code path) in a child process, in its own process group."""
    return subprocess.Popen([sys.executable, "-c", CHILD, str(project["params_file"])], cwd=PROJECT,
                            env=project["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def test_sigkilled_run_is_failed_and_live_run_left_alone(project):
    instance = project["instance"]
    proc = _start(project)
    try:
        run = _freeze_while_started(proc, instance)
        assert ProcessRecord.from_tags(run.tags).pid == proc.pid  # the tag names the process that executes the run
        assert [k for k in run.tags if k.startswith("medcore")] == [PROCESS_TAG]  # one tag in the UI, not five

        # alive (stopped, not dead): left alone
        seen = {r.run_id: r for r in recover_dead_runs(instance)}
        assert seen[run.run_id].action == "left" and "still running" in seen[run.run_id].why
        assert instance.get_run_by_id(run.run_id).status.value == "STARTED"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert instance.get_run_by_id(run.run_id).status.value == "STARTED"  # nothing notices the death by itself

    # seen from another host, the same dead run is not ours to judge
    other = Machine("another-host", Machine.current().boot_id, Machine.current().pid_ns)
    seen = {r.run_id: r for r in recover_dead_runs(instance, here=other)}
    assert seen[run.run_id].action == "left" and "another host" in seen[run.run_id].why
    assert instance.get_run_by_id(run.run_id).status.value == "STARTED"

    # the CLI recovery fails it, saying what happened and that a re-run is safe
    out = subprocess.run([sys.executable, "-m", "pipelines", "recover"], cwd=PROJECT, env=project["env"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{run.run_id} {run.job_name} STARTED: marked FAILED" in out.stdout
    assert instance.get_run_by_id(run.run_id).status.value == "FAILURE"
    [message] = _failure_messages(instance, run.run_id)
    assert f"process {proc.pid} on host {Machine.current().host} no longer exists" in message
    assert "SIGKILL" in message and "safe to re-run" in message
    assert not _unfinished(instance)
    assert not recover_dead_runs(instance)  # idempotent: nothing left to look at


@pytest.mark.parametrize("project", [1], indirect=True)
def test_daemon_monitoring_pass_fails_dead_run_after_max_runtime(project):
    """The daemon's own pass (what `dagster dev` runs every poll_interval_seconds) with the project's
    run_monitoring block: the DefaultRunLauncher cannot health-check, so only max_runtime_seconds ends it."""
    import logging

    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster._daemon.monitoring.run_monitoring import execute_run_monitoring_iteration

    instance = project["instance"]
    assert not instance.run_launcher.supports_check_run_worker_health
    proc = _start(project)
    try:
        run = _freeze_while_started(proc, instance)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    while time.time() - instance.get_run_record_by_id(run.run_id).start_time <= 1:
        time.sleep(0.1)  # past max_runtime_seconds: 1
    with WorkspaceProcessContext(instance, EmptyWorkspaceTarget()) as context:
        errors = [e for e in execute_run_monitoring_iteration(context, logging.getLogger("test")) if e]
    assert not errors, errors
    assert instance.get_run_by_id(run.run_id).status.value == "FAILURE"
    assert not _unfinished(instance)


def test_verdicts_on_real_processes():
    from dataclasses import replace

    here = Machine.current()
    me = ProcessRecord.from_tags(process_tags())
    assert me == ProcessRecord.of()  # the one tag round-trips
    assert process_verdict(me, here) == (ALIVE, f"process {os.getpid()} on host {here.host} is still running")
    assert process_verdict(None, here)[0] == UNKNOWN
    assert ProcessRecord.from_tags({PROCESS_TAG: "not json"}) is None
    assert process_verdict(me, Machine("another-host", here.boot_id, here.pid_ns))[0] == UNKNOWN
    assert process_verdict(replace(me, machine=replace(here, pid_ns="pid:[1]")), here)[0] == UNKNOWN  # a container
    if here.boot_id:
        assert process_verdict(replace(me, machine=replace(here, boot_id="an-earlier-boot")), here)[0] == DEAD
    if me.start:  # the pid reused by a later process
        assert process_verdict(replace(me, start=str(int(me.start) - 1)), here)[0] == DEAD

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    tags = ProcessRecord.of(child.pid)
    try:
        t0 = time.monotonic()  # a zombie (exited, not reaped) is dead
        while process_verdict(tags, here)[0] != DEAD:
            assert time.monotonic() - t0 < 60, process_verdict(tags, here)
            time.sleep(0.05)
        assert os.path.exists(f"/proc/{child.pid}") or not Path("/proc/self").exists()
    finally:
        child.wait()
    assert process_verdict(tags, here) == (DEAD, f"process {child.pid} on host {here.host} no longer exists")
