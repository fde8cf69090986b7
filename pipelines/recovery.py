"""Fail Dagster runs whose process was killed (SIGKILL, OOM killer, power loss) so none stays STARTED forever.

A SIGKILLed run worker cannot record its own end, and the daemon's run monitoring cannot see it either
with the ``DefaultRunLauncher`` (no worker health checks) or with in-process runs (``python -m pipelines
demo``, ``execute_in_process``), which no daemon watches. So every run we start carries the tags of
:func:`process_tags` (host, boot, PID namespace, pid and the pid's start time), and
:func:`recover_dead_runs`, called before a new run starts, reports FAILED each unfinished run whose recorded
process is provably gone. Runs whose process is alive, runs from another host or container and runs
without our tags (launched from the UI) are left alone: the daemon's ``run_monitoring`` covers those.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

PROCESS_TAG = "medcore/process"  # one tag, so the Runs page shows one medcore entry per run

ALIVE, DEAD, UNKNOWN = "alive", "dead", "unknown"


@dataclass(frozen=True)
class Machine:
    """Where processes are looked up: host name, kernel boot id and PID namespace ('' where unknown)."""

    host: str
    boot_id: str = ""
    pid_ns: str = ""

    @classmethod
    def current(cls) -> Machine:
        return cls(socket.gethostname(), _read("/proc/sys/kernel/random/boot_id"), _readlink("/proc/self/ns/pid"))


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def process_start(pid: int) -> str:
    """The start time of ``pid`` (clock ticks since boot, from /proc; '' where unknown): it tells a
    process from a later one that reuses its pid."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split() if stat else []
    return fields[19] if len(fields) > 19 else ""


@dataclass(frozen=True)
class ProcessRecord:
    """The process that executes a run: where it ran (``machine``), its pid and the pid's start time."""

    machine: Machine
    pid: int
    start: str = ""

    @classmethod
    def of(cls, pid: int | None = None, machine: Machine | None = None) -> ProcessRecord:
        """This process (or ``pid``) on this machine (or ``machine``)."""
        pid = os.getpid() if pid is None else pid
        return cls(machine or Machine.current(), pid, process_start(pid))

    def tag(self) -> dict[str, str]:
        """The run tag that records it."""
        return {PROCESS_TAG: json.dumps({**asdict(self.machine), "pid": self.pid, "start": self.start},
                                        separators=(",", ":"))}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ProcessRecord | None:
        """The record in a run's tags, or None when the run has none (or an unreadable one)."""
        try:
            doc = json.loads(tags[PROCESS_TAG])
            return cls(Machine(str(doc["host"]), str(doc.get("boot_id", "")), str(doc.get("pid_ns", ""))),
                       int(doc["pid"]), str(doc.get("start", "")))
        except (KeyError, ValueError, TypeError):
            return None


def process_tags(pid: int | None = None, machine: Machine | None = None) -> dict[str, str]:
    """The run tag naming the process that executes a run (default: this one)."""
    return ProcessRecord.of(pid, machine).tag()


def _pid_state(pid: int) -> str:
    """ALIVE, DEAD (no such process, or a zombie) or UNKNOWN (cannot check on this system)."""
    if os.name != "posix":
        return UNKNOWN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return DEAD
    except PermissionError:
        pass  # exists, owned by another user
    stat = _read(f"/proc/{pid}/stat")
    if stat and stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]:
        return DEAD  # killed, not yet reaped by its parent
    return ALIVE


def process_verdict(record: ProcessRecord | None, here: Machine) -> tuple[str, str]:
    """``(ALIVE|DEAD|UNKNOWN, why)`` for the process a run's tag records, seen from machine ``here``."""
    if record is None:
        return UNKNOWN, ("no medcore process tag (launched elsewhere, e.g. from the UI); "
                         "the daemon's run monitoring covers it")
    there, pid = record.machine, record.pid
    if there.host != here.host:
        return UNKNOWN, f"recorded on another host ({there.host}); only that host can tell whether it still runs"
    if there.boot_id and here.boot_id and there.boot_id != here.boot_id:
        return DEAD, f"host {here.host} restarted since the run began (pid {pid})"
    if there.pid_ns != here.pid_ns:  # both '' where /proc is missing
        return UNKNOWN, "recorded in another PID namespace (container) of this host; its pids are not visible here"
    state = _pid_state(pid)
    if state == DEAD:
        return DEAD, f"process {pid} on host {here.host} no longer exists"
    started = record.start
    now_started = process_start(pid)
    if state == ALIVE and started and now_started and started != now_started:
        return DEAD, f"process {pid} on host {here.host} ended; the pid now belongs to a later process"
    if state == ALIVE:
        return ALIVE, f"process {pid} on host {here.host} is still running"
    return UNKNOWN, "cannot check processes on this system"


def failure_message(run_id: str, why: str) -> str:
    """What the UI shows on a recovered run: what happened, why, and that a re-run is safe."""
    return (f"medcore recovery marked run {run_id} FAILED: it was still recorded as in progress, but {why}. "
            "Its process was most likely killed with SIGKILL (kill -9, the OOM killer, a closed terminal's "
            "process group) or the machine stopped, so Dagster never recorded its end. Nothing it half-wrote "
            "is kept (outputs are written atomically, DVC and MLflow entries are added once), so it is safe "
            "to re-run: `python -m pipelines demo`, or launch the job again from the UI; training resumes "
            "from its last checkpoint.")


@dataclass(frozen=True)
class Recovered:
    """One unfinished run looked at: ``action`` is 'failed' or 'left'."""

    run_id: str
    job_name: str
    status: str
    action: str
    why: str


def recover_dead_runs(instance, here: Machine | None = None) -> list[Recovered]:
    """Report FAILED every NOT_STARTED/STARTING/STARTED run of ``instance`` whose recorded process is
    provably dead; leave the others alone. Returns what was done with each unfinished run."""
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.events import JobFailureData, RunFailureReason

    here = here or Machine.current()
    statuses = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    done: list[Recovered] = []
    for record in instance.get_run_records(filters=RunsFilter(statuses=statuses)):
        run = record.dagster_run
        record = ProcessRecord.from_tags(dict(run.tags))
        verdict, why = process_verdict(record, here)
        if run.status == DagsterRunStatus.NOT_STARTED and record is None:
            verdict, why = UNKNOWN, "not started and not ours (a run being created elsewhere)"
        action = "left"
        if verdict == DEAD:
            current = instance.get_run_by_id(run.run_id)
            if current is not None and not current.is_finished:  # it may have ended meanwhile
                instance.report_run_failed(current, failure_message(run.run_id, why),
                                           JobFailureData(error=None,
                                                          failure_reason=RunFailureReason.UNEXPECTED_TERMINATION))
                action = "failed"
        done.append(Recovered(run.run_id, run.job_name, run.status.value, action, why))
    return done
