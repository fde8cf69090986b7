"""Issue 6: the scale-out switch is configuration only, and it works.

A real PostgreSQL server (started here, on 127.0.0.1, in a temporary folder) backs a Dagster instance
configured exactly as docs/pipelines.md says (``storage: postgres:``); one study is ingested in-process
and one with ``MEDCORE_DAGSTER_EXECUTOR=multiprocess`` through the ``dagster`` CLI; the runs and their
events are read back from Postgres itself. Kubernetes: no cluster here, so a job runs with the k8s executor
against a stand-in API server (local HTTP) and the Job manifest it submits is checked. Celery runs for
real in test_celery.py.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, in_process_executor, multiprocess_executor

from pipelines.definitions import make_definitions
from pipelines.executors import EXECUTOR_ENV, select_executor

PROJECT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"


def _unavailable(reason: str):
    """Skip locally; under CI a missing prerequisite is a failure (.ci/run installs it)."""
    (pytest.fail if IN_CI else pytest.skip)(reason)


def _pg_tool(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server on 127.0.0.1; yields the URL of an empty ``dagster`` database."""
    if _missing("dagster_postgres"):
        _unavailable("dagster-postgres not installed (pip install dagster-postgres, same release line as dagster)")
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    if not (initdb and pg_ctl):
        _unavailable("PostgreSQL server binaries missing (Debian: apt-get install -y postgresql)")
    import psycopg2

    # not pytest's tmp dir: that is private to root and the server must run as the `postgres` user
    root = Path(tempfile.mkdtemp(prefix="medcore-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        import pwd

        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port, log = root / "data", _free_port(), root / "server.log"
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
    try:
        init = subprocess.run([*as_user, initdb, "-D", str(data), "-U", "medcore", "--auth=trust", "-E", "UTF8",
                               "--no-sync"], capture_output=True, text=True)
        assert init.returncode == 0, f"initdb failed: {init.stderr}"
        start = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "30",
                                "start"], capture_output=True, text=True)
        assert start.returncode == 0, f"pg_ctl start failed: {start.stderr}\n{log.read_text() if log.exists() else ''}"
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="medcore", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
        conn.close()
        # explicit driver: SQLAlchemy >= 2.1 maps plain postgresql:// to psycopg 3, dagster-postgres ships psycopg2
        yield f"postgresql+psycopg2://medcore@127.0.0.1:{port}/dagster"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _sql(url: str, query: str, *args) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(url.replace("+psycopg2", "")) as conn, conn.cursor() as cur:
        cur.execute(query, args)
        rows = cur.fetchall()
    conn.close()
    return rows


@pytest.fixture(scope="module")
def project(tmp_path_factory, deid_key, new_project):
    """A temporary project with two synthetic studies in its inbox: (params file, [partition keys])."""
    from medcore.data.synthetic import write_synthetic_studies
    from pipelines.params import load_params
    from pipelines.steps.ingest import deidentifier, list_studies

    root = tmp_path_factory.mktemp("scale")
    params_file = new_project(root)
    write_synthetic_studies(root / "inbox", n_patients=2, seed=1, shape=(16, 16, 6))
    params = load_params(params_file)
    keys = sorted(list_studies(params, deidentifier(params)))
    assert len(keys) >= 2
    return params_file, keys


@pytest.fixture
def pg_home(tmp_path, postgres_url, monkeypatch):
    """A DAGSTER_HOME whose dagster.yaml is the documented Postgres switch (URL from $DAGSTER_PG_URL)."""
    home = (tmp_path / "dagster_home").resolve()
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "storage:\n  postgres:\n    postgres_url:\n      env: DAGSTER_PG_URL\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
        "telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_postgres_instance_stores_an_ingest_run(pg_home, postgres_url, project):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    from pipelines.resources import PipelineSettings

    params_file, keys = project
    with DagsterInstance.from_config(str(pg_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        instance.add_dynamic_partitions("study", [keys[0]])
        defs = make_definitions(PipelineSettings(params_file=str(params_file)), executor="in_process")
        result = defs.resolve_job_def("ingest_study").execute_in_process(partition_key=keys[0], instance=instance)
        assert result.success
    # read back from the server itself, not through Dagster
    assert _sql(postgres_url, "SELECT status FROM runs WHERE run_id = %s", result.run_id) == [("SUCCESS",)]
    materialized = _sql(postgres_url, "SELECT asset_key, partition FROM event_logs WHERE run_id = %s AND "
                        "dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY id", result.run_id)
    assert [p for _, p in materialized] == [keys[0]] * 4
    assert {k for k, _ in materialized} == {f'["{a}"]' for a in ("raw_dicom", "series_index", "nifti_volumes",
                                                                   "labels")}
    assert ("study", keys[0]) in _sql(postgres_url, "SELECT partitions_def_name, partition FROM dynamic_partitions")
    assert not [p for p in pg_home.rglob("*") if p.suffix == ".db"], "no SQLite storage may be created"


def test_multiprocess_executor_runs_steps_in_worker_processes(pg_home, postgres_url, project, monkeypatch):
    params_file, keys = project
    key = keys[1]
    with DagsterInstance.from_config(str(pg_home)) as instance:
        instance.add_dynamic_partitions("study", [key])
    env = {**os.environ, EXECUTOR_ENV: "multiprocess", "MEDCORE_PARAMS": str(params_file)}
    dagster = str(Path(sys.executable).with_name("dagster"))
    proc = subprocess.run([dagster, "asset", "materialize", "-m", "pipelines.definitions",
                           "--select", "raw_dicom,series_index", "--partition", key],
                          cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = _sql(postgres_url, "SELECT r.run_id, r.status FROM runs r JOIN run_tags t ON t.run_id = r.run_id "
                "WHERE t.key = 'dagster/partition' AND t.value = %s", key)
    assert len(runs) == 1 and runs[0][1] == "SUCCESS", runs
    run_id = runs[0][0]
    with DagsterInstance.from_config(str(pg_home)) as instance:
        events = [e for e in instance.all_logs(run_id) if e.dagster_event is not None]
    def of(kind: DagsterEventType) -> list:
        return [e.dagster_event for e in events if e.dagster_event.event_type == kind]

    assert len(of(DagsterEventType.STEP_WORKER_STARTED)) == 2  # one worker process per step
    step_pids = {e.step_key: e.pid for e in of(DagsterEventType.STEP_START)}
    (run_start,) = of(DagsterEventType.RUN_START)
    assert set(step_pids) == {"raw_dicom", "series_index"}
    assert len(set(step_pids.values())) == 2 and run_start.pid not in step_pids.values()
    assert len(of(DagsterEventType.ASSET_MATERIALIZATION)) == 2


def test_executor_choice_is_configuration(monkeypatch):
    monkeypatch.delenv(EXECUTOR_ENV, raising=False)
    assert select_executor() is in_process_executor
    monkeypatch.setenv(EXECUTOR_ENV, "multiprocess")
    assert select_executor() is multiprocess_executor
    assert make_definitions().resolve_job_def("ingest_study").executor_def is multiprocess_executor
    assert make_definitions(executor="in_process").resolve_job_def("retrain").executor_def is in_process_executor
    monkeypatch.setenv(EXECUTOR_ENV, "dask")
    with pytest.raises(ValueError, match=f"{EXECUTOR_ENV}='dask'.*celery.*in_process.*k8s.*multiprocess"):
        select_executor()


@pytest.mark.parametrize("name, module, attribute, package", [
    ("celery", "dagster_celery", "celery_executor", "dagster-celery"),
    ("k8s", "dagster_k8s", "k8s_job_executor", "dagster-k8s"),
])
def test_cluster_executors_come_from_their_packages(monkeypatch, name, module, attribute, package):
    if _missing(module):
        _unavailable(f"{package} not installed (pip install -e '.[scale]')")
    base = getattr(__import__(module), attribute)
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ImportError, match=f"needs the package '{package}'.*pip install"):
        select_executor(name)
    monkeypatch.delitem(sys.modules, module)
    chosen = make_definitions(executor=name).resolve_job_def("ingest_study").executor_def
    # the package's executor, configured from our environment (pipelines/executors.py)
    assert chosen.name == base.name == name and chosen is not base
    assert chosen.executor_creation_fn is base.executor_creation_fn
    assert chosen.config_schema.parent_def is base


class _KubeAPI(BaseHTTPRequestHandler):
    """The few Kubernetes API calls the k8s step executor makes; records each request, runs nothing."""

    requests: list[tuple[str, str, dict | None]] = []

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, body))
        path = self.path.split("?")[0]
        if self.command == "POST" and path.endswith("/jobs"):
            return self._reply(201, body)
        if self.command == "GET" and "/jobs/" in path:  # job status: report it failed, so the run ends
            name = path.split("/jobs/")[1].split("/")[0]
            return self._reply(200, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
                                     "status": {"failed": 1}})
        if self.command == "GET" and path.endswith("/pods"):
            return self._reply(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})
        if self.command == "DELETE":
            return self._reply(200, {"apiVersion": "v1", "kind": "Status", "status": "Success"})
        return self._reply(404, {"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": 404})

    do_GET = do_POST = do_DELETE = do_PATCH = _handle

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def kube_api(tmp_path):
    """A stand-in Kubernetes API server on 127.0.0.1 (real HTTP) and a kubeconfig naming it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KubeAPI)
    _KubeAPI.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "test", "user": {"token": "unused"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}]}))
    try:
        yield kubeconfig, _KubeAPI.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_k8s_executor_submits_a_job_manifest_for_our_step(kube_api, deid_key, new_project, tmp_path):
    """No cluster here: the run goes as far as the Job manifest that dagster-k8s submits for our first step."""
    if _missing("dagster_k8s"):
        _unavailable("dagster-k8s not installed (pip install -e '.[scale]')")
    from medcore.data.synthetic import write_synthetic_studies
    from pipelines.executors import K8S_IMAGE_ENV, K8S_KUBECONFIG_ENV, K8S_NAMESPACE_ENV, K8S_SECRETS_ENV
    from pipelines.params import load_params
    from pipelines.steps.ingest import deidentifier, list_studies
    from pipelines.steps.layout import Layout

    kubeconfig, requests = kube_api
    params_file = new_project(tmp_path / "project")  # its own output tree: nothing may be written to it
    write_synthetic_studies(tmp_path / "project" / "inbox", n_patients=1, seed=2, shape=(16, 16, 6))
    keys = sorted(list_studies(load_params(params_file), deidentifier(load_params(params_file))))
    home = (tmp_path / "dagster_home").resolve()
    home.mkdir()
    # the run launcher a Kubernetes deployment uses (Helm chart); it names the instance ConfigMap
    (home / "dagster.yaml").write_text(yaml.safe_dump({"telemetry": {"enabled": False}, "run_launcher": {
        "module": "dagster_k8s", "class": "K8sRunLauncher", "config": {
            "instance_config_map": "medcore-dagster-instance", "service_account_name": "medcore",
            "load_incluster_config": False, "kubeconfig_file": str(kubeconfig), "job_namespace": "medcore"}}}))
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("study", [keys[0]])
    image = "registry.example.org/medcore:test"
    env = {**os.environ, "DAGSTER_HOME": str(home), EXECUTOR_ENV: "k8s", "MEDCORE_PARAMS": str(params_file),
           K8S_IMAGE_ENV: image, K8S_NAMESPACE_ENV: "medcore-steps", K8S_SECRETS_ENV: "medcore-secrets",
           K8S_KUBECONFIG_ENV: str(kubeconfig)}
    dagster = str(Path(sys.executable).with_name("dagster"))
    proc = subprocess.run([dagster, "asset", "materialize", "-m", "pipelines.definitions", "--select", "raw_dicom",
                           "--partition", keys[0]], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode != 0, "the stand-in API reports the step's Job failed, so the run must fail"
    assert 'Executing step "raw_dicom" in Kubernetes job' in log, log

    posted = [(path, body) for method, path, body in requests if method == "POST"]
    assert len(posted) == 1, [r[:2] for r in requests]
    path, job = posted[0]
    assert path == "/apis/batch/v1/namespaces/medcore-steps/jobs" and job["kind"] == "Job"
    assert job["metadata"]["labels"]["dagster/op"] == "raw_dicom"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image
    assert container["args"][:3] == ["dagster", "api", "execute_step"]
    env_in_pod = {e["name"]: e.get("value") for e in container["env"]}
    assert env_in_pod[EXECUTOR_ENV] == "k8s" and env_in_pod["MEDCORE_PARAMS"] == str(params_file)
    assert env_in_pod["DAGSTER_RUN_STEP_KEY"] == "raw_dicom" and "DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS" in env_in_pod
    assert {"secretRef": {"name": "medcore-secrets"}} in container["envFrom"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "medcore"
    assert "MEDCORE_DEID_KEY" not in env_in_pod, "the de-identification key travels as a Secret, never inline"
    # nothing ran here: the step was handed to Kubernetes
    out = Layout.from_params(load_params(params_file)).out
    assert not (out.exists() and any(p.is_file() for p in out.rglob("*"))), "a step ran outside Kubernetes"
