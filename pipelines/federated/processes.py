"""The processes of a federation on this machine: one SuperLink, one SuperNode per site, ``flwr run``.

Every process binds 127.0.0.1 on a free port, runs in its own process group (so stopping it stops
the ClientApp/ServerApp it spawned) and logs to a file. ``TLS`` files switch the SuperLink and the
SuperNodes from ``--insecure`` to certificates, as a deployment across machines needs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.params import PROJECT_ROOT

APP_DIR = Path(__file__).resolve().parent / "app"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class TLS:
    """CA certificate, server certificate and key (PEM) for the SuperLink; SuperNodes check it with the CA."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_dir(cls, folder: str | Path) -> TLS:
        folder = Path(folder)
        files = cls(folder / "ca.crt", folder / "server.pem", folder / "server.key")
        for path in (files.ca, files.cert, files.key):
            if not path.is_file():
                raise FileNotFoundError(f"TLS folder {folder}: {path.name} is missing (need ca.crt, server.pem, "
                                        "server.key)")
        return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Flower process: the project importable, its own FLWR_HOME, ``extra`` set."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), path) if p),
            "PATH": os.pathsep.join((str(BIN), os.environ.get("PATH", ""))),  # Flower starts its own helpers
            "FLWR_HOME": str(flwr_home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get(
                "OMP_NUM_THREADS", "1"), **extra}


def start(command: list[str], env: dict, log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=log.parent)


def wait_listening(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the SuperLink exited (code {proc.returncode}); see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"the SuperLink did not listen on 127.0.0.1:{port} within {timeout:.0f} s; see {log}")


def start_superlink(out: Path, port: int, env: dict, tls: TLS | None = None) -> subprocess.Popen:
    security = (["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
                if tls else ["--insecure"])
    log = out / "superlink.log"
    proc = start([str(BIN / "flower-superlink"), *security, "--host", "127.0.0.1", "--port", str(port),
                  "--disable-runtime-dependency-installation"], env, log)
    wait_listening(port, proc, log)
    return proc


def start_supernode(site_dir: Path, work: Path, superlink: str, env: dict, tls: TLS | None = None) -> subprocess.Popen:
    security = ["--root-certificates", str(tls.ca)] if tls else ["--insecure"]
    return start([str(BIN / "flower-supernode"), *security, "--superlink", superlink, "--host", "127.0.0.1",
                  "--port", str(free_port())], env, work / "supernode.log")


def write_connection(flwr_home: Path, address: str, tls: TLS | None = None) -> None:
    """The ``flwr`` CLI's SuperLink connection (``$FLWR_HOME/config.toml``), named ``medcore``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = f'root-certificates = "{tls.ca}"' if tls else "insecure = true"
    (flwr_home / "config.toml").write_text(f'[superlink]\ndefault = "medcore"\n\n[superlink.medcore]\n'
                                           f'address = "{address}"\n{security}\n')


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def flwr_run(run_config: dict, env: dict, log: Path) -> int:
    """``flwr run APP medcore --stream`` with ``run_config`` (written beside ``log`` as TOML); its output goes to
    ``log``; returns its exit code."""
    config = log.parent / "run_config.toml"
    config.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()))
    with open(log, "ab") as fh:
        return subprocess.run([str(BIN / "flwr"), "run", str(APP_DIR), "medcore", "--stream", "--run-config",
                               str(config)], env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent).returncode


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass
