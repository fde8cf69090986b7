"""A real federation: a SuperLink and four SuperNodes (processes) on 127.0.0.1, tiny synthetic DICOM sites.

One run (module scope, over TLS with a throwaway CA) is read by every test: three sites train two
rounds, a fourth site with other class names is refused, one SuperNode is killed during round 2. The
run then registers its model (the first: champion). A later test kills the server during a third
round, then runs the Dagster job: it resumes, the sites score it and the champion, and the
registration applies the bootstrap rule. The last test registers the server folder again
(``--register-only``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import nibabel as nib
import pytest
import yaml

from pipelines.federated.federate import FederationSettings, federate
from pipelines.federated.processes import TLS
from pipelines.federated.records import AUDIT_ENV, violations
from pipelines.federated.site import prepare_site, site_params
from pipelines.params import load_params
from pipelines.steps.layout import read_json

SHAPE = (32, 32, 12)


def make_site(root: Path, name: str, seed: int, n_patients: int = 2, class_names: dict | None = None) -> Path:
    """``root/name``: params.yaml, ``inbox/`` with synthetic DICOM studies and labels, key in ``root/keys``."""
    from medcore.data.synthetic import write_synthetic_studies

    site = root / name
    site.mkdir(parents=True)
    write_synthetic_studies(site / "inbox", n_patients=n_patients, seed=seed, shape=SHAPE, localizer=False)
    if class_names is not None:  # a site that names its classes differently
        manifest = site / "inbox" / "labels" / "labels.json"
        data = json.loads(manifest.read_text())
        data["label_names"] = class_names
        manifest.write_text(json.dumps(data))
    keys = root / "keys"
    keys.mkdir(exist_ok=True)
    params = {"source": {"dicom_dir": "inbox/dicom", "label_manifest": "inbox/labels/labels.json",
                         "settle_seconds": 0},
              "output_dir": "outputs", "deid_key_file": str(keys / f"{name}.key"),
              "train": {"val_fraction": 0.34},
              "dataset": {"test_fraction": 0.0}}  # exactly one test patient (the smallest keyed hash), the rest train
    (site / "params.yaml").write_text(yaml.safe_dump(params))
    return site


def coordinator_params(root: Path) -> Path:
    """params.yaml of the coordinating project: only the MLflow registry matters here."""
    root.mkdir(parents=True, exist_ok=True)
    params = {"output_dir": "outputs",
              "register": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_root": "mlartifacts",
                           "model_name": "medcore-federated", "experiment": "medcore-federated"}}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


PLAN = {"patch_size": [16, 16, 8], "base_filters": 4, "batch_size": 2}
OTHER_CLASSES = {"0": "background", "1": "liver", "2": "tumour"}


def kill_in_round(out: Path, who: str, rnd: int, timeout: float = 400.0) -> threading.Thread:
    """In the background: once the server logs round ``rnd``, SIGKILL ``who`` (a site's SuperNode and its
    ClientApp, or ``superlink``: the server) by its process group."""

    def watch() -> None:
        end = time.time() + timeout
        log, processes = out / "federation.log", out / "processes.json"
        while time.time() < end:
            if log.is_file() and f"round {rnd}: training" in log.read_text() and processes.is_file():
                pids = read_json(processes)
                pid = pids["superlink"] if who == "superlink" else pids["supernodes"][who]
                time.sleep(2.0)  # the site is busy with the round
                os.killpg(pid, signal.SIGKILL)
                return
            time.sleep(0.5)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def make_certificates(folder: Path) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost: ``ca.crt``, ``server.pem``,
    ``server.key`` in ``folder``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def builder(subject: str, issuer: str, key) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
                .not_valid_after(now + datetime.timedelta(days=1)))

    ca_key, key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    ca = (builder("medcore test CA", "medcore test CA", ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (builder("127.0.0.1", "medcore test CA", key)
              .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return folder


def probe_superlink(out: Path, ca: Path, found: dict, timeout: float = 300.0) -> threading.Thread:
    """In the background, once the federation's processes run: a TLS handshake with the SuperLink verified
    against ``ca``, then a plain-text HTTP request to the same port; what each got goes into ``found``."""

    def watch() -> None:
        end = time.time() + timeout
        while time.time() < end and not (out / "processes.json").is_file():
            time.sleep(0.3)
        try:
            address = re.search(r'address = "([^"]+)"', (out / "flwr-home" / "config.toml").read_text())
            host, port = str(address.group(1) if address else "").rsplit(":", 1)
            context = ssl.create_default_context(cafile=str(ca))
            with socket.create_connection((host, int(port)), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as tls:
                found["tls"] = tls.version()
                found["peer"] = dict(item[0] for item in tls.getpeercert()["subject"])
            with socket.create_connection((host, int(port)), timeout=10) as raw:
                raw.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                try:
                    found["plain"] = raw.recv(64)
                except OSError as error:  # the TLS server resets a plain-text client
                    found["plain"] = repr(error).encode()
        except (OSError, ValueError) as error:
            found["error"] = repr(error)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    sites = [make_site(root, "site-a", seed=1, n_patients=3), make_site(root, "site-b", seed=2),
             make_site(root, "site-c", seed=3), make_site(root, "site-x", seed=4, class_names=OTHER_CLASSES)]
    params = load_params(coordinator_params(root / "coordinator"))
    out = root / "server"
    settings = FederationSettings(rounds=2, local_steps=2, round_timeout=120.0, prepare_timeout=300.0,
                                  plan_overrides=PLAN)
    certificates = make_certificates(root / "certs")
    killer, probed = kill_in_round(out, "site-c", 2), {}
    prober = probe_superlink(out, certificates / "ca.crt", probed)
    done = federate(sites, params, settings, out, tls=TLS.from_dir(certificates), env={AUDIT_ENV: str(root / "audit")})
    killer.join(timeout=1)
    prober.join(timeout=1)
    return {"root": root, "sites": sites, "params": params, "done": done, "out": out, "audit": root / "audit",
            "probed": probed}


def test_federation_completes_and_registers_a_model_that_loads_by_alias(federation):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    done, params = federation["done"], federation["params"]
    assert done.result["rounds"] == 2 and done.result["sites"] == ["site-a", "site-b", "site-c"]
    reg = done.registered
    assert reg["alias"] == "champion" and reg["sites"] == "site-a,site-b,site-c"
    uri = params["register"]["tracking_uri"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(uri, uri)
    version = client.get_model_version_by_alias("medcore-federated", "champion")
    tags = version.tags
    assert tags["rounds"] == "2" and tags["aggregation"] == "fedavg" and tags["refused_sites"] == "site-x"
    assert tags["promotion"] == reg["reason"] == "no champion yet" and len(tags["evaluation_set"]) == 20
    hashes = json.loads(tags["site_dataset_hashes"])
    assert sorted(hashes) == ["site-a", "site-b", "site-c"] and all(len(h) == 64 for h in hashes.values())
    assert not any(str(federation["root"]) in v for v in tags.values())  # site names, never paths
    table = client.download_artifacts(version.run_id, "evaluation/per_site.csv")
    assert set(pd.read_csv(table)["site"]) <= {"site-a", "site-b", "site-c"}
    cases = pd.read_csv(client.download_artifacts(version.run_id, "evaluation/site_cases.csv"))
    per_site = done.result["per_site"]
    assert list(cases.columns) == ["site", "case", "dice", "champion_dice"] and cases["champion_dice"].isna().all()
    assert sorted(set(cases["site"])) == sorted(per_site) and len(cases) == sum(len(m["case_dice"])
                                                                                for m in per_site.values())
    assert all(len(m["case_dice"]) == m["num-examples"] and "champion_case_dice" not in m for m in per_site.values())
    model = mlflow.pyfunc.load_model("models:/medcore-federated@champion")
    image = next((federation["sites"][0] / "outputs" / "dataset" / "imagesTr").glob("*.nii.gz"))
    out = model.predict(pd.DataFrame({"image": [base64.b64encode(image.read_bytes()).decode("ascii")]}))
    pred = federation["root"] / "pred.nii.gz"
    pred.write_bytes(base64.b64decode(out["labels"][0]))  # the model takes and returns content, never a path
    assert nib.load(pred).shape[:3] == nib.load(image).shape[:3]


def test_the_superlink_served_tls_with_the_given_certificate_and_refused_plain_text(federation):
    probed, home = federation["probed"], federation["out"] / "flwr-home"
    assert "error" not in probed and probed["tls"].startswith("TLSv1") and probed["peer"]["commonName"] == "127.0.0.1"
    assert not probed["plain"].startswith(b"HTTP/")
    config = (home / "config.toml").read_text()
    assert f'root-certificates = "{federation["root"] / "certs" / "ca.crt"}"' in config and "insecure" not in config


def test_pipeline_sites_train_and_test_on_their_datasets_split_by_patient(federation):
    from pipelines.steps.convert import study_labels
    from pipelines.steps.dataset import available_studies
    from pipelines.steps.layout import Layout

    def names(cases) -> list[str]:
        return sorted(Path(c["image"]).name for c in cases)

    for folder in federation["sites"]:
        site, params = prepare_site(folder), site_params(folder)
        dataset_dir = Layout.from_params(params).dataset_dir
        dataset = read_json(dataset_dir / "dataset.json")
        assert names(site.train) == names(dataset["training"]) and names(site.test) == names(dataset["test"])
        patient = {f"{p['series_id']}.nii.gz": p["subject"] for key in available_studies(params)
                   for p in study_labels(params, key)["pairs"]}
        train, test = {patient[n] for n in names(site.train)}, {patient[n] for n in names(site.test)}
        assert train and len(test) == 1 and not train & test
        sides = read_json(dataset_dir / "split.json")["patients"]
        assert sides == {**{p: "train" for p in train}, **{p: "test" for p in test}}


def test_a_pipeline_site_without_test_patients_is_refused_with_what_to_change(tmp_path):
    site = make_site(tmp_path, "site-solo", seed=5, n_patients=1)
    with pytest.raises(ValueError, match=r"site site-solo: its dataset has no test patients .*dataset\.test_fraction"):
        prepare_site(site)


def test_site_with_other_class_names_is_refused_by_name_with_its_reason(federation):
    refused = federation["done"].result["refused"]
    assert list(refused) == ["site-x"] and "class names" in refused["site-x"] and "tumour" in refused["site-x"]
    assert "site site-x refused: class names" in (federation["out"] / "federation.log").read_text()


def test_supernode_killed_mid_round_is_reported_and_the_run_finishes(federation):
    log = (federation["out"] / "federation.log").read_text()
    assert "round 2: site site-c missing" in log
    rounds = read_json(federation["out"] / "rounds.json")
    assert rounds[0]["sites"] == ["site-a", "site-b", "site-c"]
    assert rounds[1]["sites"] == ["site-a", "site-b"] and "site-c" in rounds[1]["missing"]
    assert (federation["out"] / "result.json").is_file()


def test_each_site_keeps_its_optimiser_moments_between_rounds_at_the_site(federation):
    from medcore.engine.checkpoint import load_checkpoint
    from medcore.engine.schedulers import build_schedule
    from pipelines.federated.plan import plan_key
    from pipelines.federated.site import OPTIMIZER_STATE

    plan = read_json(federation["out"] / "plan.json")
    key = plan_key(plan)
    # the rounds follow one schedule over their 4 steps: the last step's lr is the plan's, not round 1's
    lr, schedule = float(plan["optimizer"]["lr"]), build_schedule(plan["schedule"], 4)
    last_lr = lr * schedule.factor(3)
    for site, steps in (("site-a", 4), ("site-b", 4)):  # 2 rounds of 2 local steps: the moments carried over
        state = load_checkpoint(federation["root"] / site / "outputs" / "federated" / OPTIMIZER_STATE)
        assert state["key"].endswith(f":{key}")
        assert {float(s["step"]) for s in state["optimizer"]["state"].values()} == {float(steps)}
        groups = state["optimizer"]["param_groups"]
        assert [float(g["lr"]) for g in groups] == pytest.approx([last_lr] * len(groups))
    rounds = read_json(federation["out"] / "rounds.json")
    assert [r["lr"] for r in rounds] == pytest.approx([lr * schedule.factor(first) for first in (0, 2)])


def test_every_message_carries_only_weights_and_metrics_and_no_pseudonym(federation):
    files = sorted(federation["audit"].glob("*.jsonl"))
    lines = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    sent = [m for m in lines if m["direction"] == "sent"]
    assert {m["type"] for m in sent} == {"query", "train", "evaluate"}
    assert [v for m in sent for v in violations(m)] == []
    for m in sent:
        if m["type"] == "train":
            assert {r["kind"] for r in m["records"].values()} == {"ArrayRecord", "MetricRecord"}
        if m["type"] == "evaluate":
            assert {r["kind"] for r in m["records"].values()} == {"MetricRecord"}
            items = m["records"]["metrics"]["items"]
            assert [k for k, v in items.items() if isinstance(v, list)] == ["case_dice"]
    received = [m for m in lines if m["direction"] == "received" and m["type"] == "evaluate"]
    assert received and all(sorted(m["records"]) == ["model", "model-spec"] for m in received)  # no champion yet
    # pseudonyms (study keys and series ids) of every site: in no message and nowhere in the server folder
    pseudonyms = set()
    for site in federation["sites"]:
        pseudonyms |= {p.name for p in (site / "outputs" / "converted").iterdir() if not p.name.startswith(".")}
        pseudonyms |= {p.name.split(".nii")[0] for p in (site / "outputs" / "dataset" / "imagesTr").iterdir()}
    assert len(pseudonyms) > 8
    texts = [json.dumps(lines)] + [p.read_text(errors="ignore") for p in federation["out"].rglob("*")
                                   if p.is_file() and p.suffix in (".json", ".log", ".csv", ".toml")]
    assert not [p for p in pseudonyms for t in texts if p in t]


def test_killed_server_resumes_from_its_last_round_checkpoint_through_dagster_with_secagg(federation, monkeypatch):
    """A third round on the same server folder: its server is killed mid-round, so the run fails; the
    ``federate`` Dagster job then resumes after round 2 and runs round 3 with SecAgg+, where what the sites
    send is masked (audited as above). The coordinator hands the sites the champion (version 1) with the global
    model; the registration pairs their per-case Dice and records the bootstrap and its reason on version 2."""
    import pandas as pd
    from dagster import DagsterInstance
    from mlflow.tracking import MlflowClient

    from medcore.engine.checkpoint import load_checkpoint
    from pipelines.definitions import make_definitions
    from pipelines.federated.federate import run_federation
    from pipelines.resources import PipelineSettings

    root, out = federation["root"], federation["out"]
    uri = federation["params"]["register"]["tracking_uri"]
    killer = kill_in_round(out, "superlink", 3)
    with pytest.raises(RuntimeError, match="without result.json"):
        run_federation(federation["sites"], out, FederationSettings(rounds=3, local_steps=2, round_timeout=120.0,
                                                                    plan_overrides=PLAN))
    killer.join(timeout=1)
    assert "round 3: training" in (out / "federation.log").read_text()
    assert load_checkpoint(out / "checkpoints" / "last.safetensors")["round"] == 2
    settings = PipelineSettings(params_file=str(root / "coordinator" / "params.yaml"))
    config = {"sites": [str(s) for s in federation["sites"]], "out": str(out), "rounds": 3, "local_steps": 2,
              "round_timeout": 120.0, "plan_overrides": json.dumps(PLAN), "secagg": True}
    audit = federation["root"] / "audit-secagg"
    monkeypatch.setenv(AUDIT_ENV, str(audit))
    (root / "dagster_home").mkdir(exist_ok=True)
    with DagsterInstance.local_temp(str(root / "dagster_home")) as instance:
        job = make_definitions(settings).resolve_job_def("federate")
        result = job.execute_in_process(instance=instance, run_config={"ops": {"federated_model": {"config": config}}})
    assert result.success
    log = (out / "federation.log").read_text()
    assert log.count("resuming after round 2 from last.safetensors") == 2  # the killed server, then Dagster's
    assert "round 3: aggregated 3 sites with SecAgg+" in log
    rounds = read_json(out / "rounds.json")
    assert [r["round"] for r in rounds] == [1, 2, 3] and rounds[2]["sites"] == ["site-a", "site-b", "site-c"]
    meta = result.asset_materializations_for_node("federated_model")[0].metadata
    assert meta["version"].value == "2" and meta["rounds"].value == 3
    sent = [json.loads(line) for f in sorted(audit.glob("*.jsonl")) for line in f.read_text().splitlines()]
    sent = [m for m in sent if m["direction"] == "sent" and m["type"] == "train"]
    assert len(sent) == 3 * 4 and all("secaggplus_configs" in m["records"] for m in sent)  # 4 stages per site
    assert [v for m in sent for v in violations(m)] == []
    masked = [m for m in sent if "fitres.parameters" in m["records"]]
    assert len(masked) == 3 and all(m["records"]["fitres.parameters"]["items"] == {} for m in masked)
    # the sites scored the global model and the champion (version 1) on the same cases: the bootstrap rule decides
    assert "evaluation: the global model and the champion at ['site-a', 'site-b', 'site-c']" in log
    audited = [json.loads(line) for f in sorted(audit.glob("*.jsonl")) for line in f.read_text().splitlines()]
    evaluated = [m for m in audited if m["type"] == "evaluate"]
    assert sorted(m["records"]["champion"]["kind"] for m in evaluated if m["direction"] == "received") == \
        ["ArrayRecord"] * 3
    replies = [m for m in evaluated if m["direction"] == "sent"]
    assert len(replies) == 3 and [v for m in replies for v in violations(m)] == []
    pairs = sum(1 for m in replies for a, b in zip(m["records"]["metrics"]["items"]["case_dice"],
                                                   m["records"]["metrics"]["items"]["champion_case_dice"])
                if a == a and b == b)
    version = MlflowClient(uri, uri).get_model_version("medcore-federated", "2")
    tags = version.tags
    assert meta["promotion"].value == tags["promotion"]
    assert tags["promotion"].startswith(f"too few test cases for a decision: {pairs} paired test cases, at least 10")
    assert int(tags["bootstrap_cases"]) == pairs >= 3
    assert float(tags["bootstrap_lower"]) <= float(tags["bootstrap_mean_difference"]) <= float(tags["bootstrap_upper"])
    assert read_json(out / "champion.json")["version"] == "1"
    table = pd.read_csv(MlflowClient(uri, uri).download_artifacts(version.run_id, "promotion/paired_cases.csv"))
    assert len(table) == pairs and {c.rsplit(":", 1)[0] for c in table["case"]} <= {"site-a", "site-b", "site-c"}
    assert str(MlflowClient(uri, uri).get_model_version_by_alias("medcore-federated", "champion").version) == "1"


def test_register_only_registers_the_server_folder_and_fetch_champion_fetches_it(federation, tmp_path):
    """``python -m pipelines federate --register-only`` on the server folder (a federation run across machines):
    a new version, which the champion rule keeps challenger; ``--fetch-champion`` puts the champion in a folder."""
    from mlflow.tracking import MlflowClient

    from medcore.inferers.model_dir import load_model_dir
    from pipelines.federated.cli import main

    out, uri = federation["out"], federation["params"]["register"]["tracking_uri"]
    params = str(federation["root"] / "coordinator" / "params.yaml")
    assert main(["--register-only", "--out", str(out), "--params", params]) == 0
    registered = read_json(out / "registered_model.json")
    client = MlflowClient(uri, uri)
    versions = client.search_model_versions("name = 'medcore-federated'")
    assert int(registered["version"]) == max(int(v.version) for v in versions) >= 2
    version = client.get_model_version("medcore-federated", registered["version"])
    assert registered["alias"] == "challenger" and version.tags["promotion"] == registered["reason"]
    assert version.tags["evaluation_set"] == registered["evaluation_set"]
    assert version.tags["sites"] == ",".join(read_json(out / "result.json")["sites"])
    assert main(["--fetch-champion", "--out", str(tmp_path / "server"), "--params", params]) == 0
    assert read_json(tmp_path / "server" / "champion.json") == {"model_name": "medcore-federated", "version": "1"}
    load_model_dir(tmp_path / "server" / "champion")
