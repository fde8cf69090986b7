"""The pure parts of federated training: refusals, pooled planning, site sampling, what a message may carry."""

from __future__ import annotations

import pytest
import torch

from pipelines.federated.plan import federated_plan, pool_fingerprints, refusals
from pipelines.federated.records import describe_records, fingerprint_records, read_fingerprint, violations
from pipelines.federated.server_app import sample_sites
from pipelines.federated.site import ProximalLoss, site_name

LABELS = {"background": 0, "organ": 1, "lesion": 2}


def fp(site: str, n: int = 4, modality: str = "CT", labels: dict | None = None, spacing=(1.5, 1.5, 3.0),
       shape=(40.0, 40.0, 20.0), mean: float = 80.0) -> dict:
    return {"site": site, "dataset_hash": "ab" * 32, "modality": modality, "labels": labels or LABELS,
            "num_cases": n, "median_shape": list(shape), "min_shape": [int(v) for v in shape],
            "max_shape": [int(v) for v in shape], "median_spacing": list(spacing), "spacing_varies": False,
            "foreground_intensity": {"mean": mean, "std": 10.0, "p00_5": mean - 30, "p99_5": mean + 30},
            "foreground_max_ratio": 1.2, "labels_present": [0, 1, 2]}


def test_disagreeing_sites_are_refused_by_name_with_the_reason():
    fps = {"a": fp("a"), "b": fp("b"), "c": fp("c", modality="MR"),
           "d": fp("d", labels={"background": 0, "liver": 1, "tumour": 2})}
    out = refusals(fps)
    assert sorted(out) == ["c", "d"]
    assert "modality MR differs from the federation's CT" in out["c"]
    assert "class names" in out["d"] and "tumour" in out["d"]
    assert refusals({"b": fp("b", modality="MR"), "a": fp("a")}) == {"b": "modality MR differs from the "
                                                                          "federation's CT"}  # tie: earliest name


def test_pooled_fingerprint_weights_sites_by_case_count():
    pooled = pool_fingerprints([fp("a", n=9, spacing=(1.0, 1.0, 2.0), mean=100.0),
                                fp("b", n=1, spacing=(2.0, 2.0, 4.0), mean=0.0, shape=(80.0, 80.0, 40.0))])
    assert pooled["num_cases"] == 10 and pooled["median_spacing"] == [1.0, 1.0, 2.0]
    assert pooled["spacing_varies"] and pooled["max_shape"] == [80, 80, 40]
    assert pooled["foreground_intensity"]["mean"] == pytest.approx(90.0)
    assert pooled["foreground_intensity"]["p00_5"] == -30.0 and pooled["foreground_intensity"]["p99_5"] == 130.0


def test_federated_plan_is_the_single_site_planner_on_the_pooled_fingerprint():
    from medcore.engine.presets import make_plan

    fps = {"a": fp("a"), "b": fp("b", n=8), "x": fp("x", modality="MR")}
    fed = federated_plan(fps, {"base_filters": 4})
    assert fed.accepted == ("a", "b") and list(fed.refused) == ["x"]
    single = make_plan(pool_fingerprints([fps["a"], fps["b"]]), "synthetic_ct", "cpu",
                       {"base_filters": 4, "labels": LABELS})
    assert {k: v for k, v in fed.plan.items() if k != "reasons"} == {k: v for k, v in single.items() if k != "reasons"}
    with pytest.raises(ValueError, match="no site can join"):
        federated_plan({})


def test_sites_per_round_follow_the_fraction_reproducibly():
    sites = {1: "a", 2: "b", 3: "c", 4: "d"}
    draws = [sample_sites(sites, 0.5, 1, seed=0, rnd=r) for r in range(1, 6)]
    assert all(len(d) == 2 for d in draws) and len({tuple(d) for d in draws}) > 1
    assert draws[0] == sample_sites(sites, 0.5, 1, seed=0, rnd=1)
    assert len(sample_sites(sites, 0.1, 3, seed=0, rnd=1)) == 3


def test_fingerprint_travels_as_identity_and_numbers_only():
    from flwr.app import RecordDict

    original = fp("site-a")
    records = fingerprint_records(original)
    assert read_fingerprint(records) == original
    assert violations({"type": "query", "error": False, "records": describe_records(records)}) == []
    bad = {"type": "train", "error": False,
           "records": describe_records(RecordDict({"arrays": records["fingerprint"], "extra": records["identity"]}))}
    assert any("'extra'" in v for v in violations(bad)) and any("'arrays'" in v for v in violations(bad))
    assert violations({"type": "custom", "error": False, "records": {}}) == ["unexpected message type 'custom'"]


def test_site_names_are_plain_identifiers(tmp_path):
    assert site_name(tmp_path / "hospital-a") == "hospital-a"
    with pytest.raises(ValueError, match="not a plain site name"):
        site_name(tmp_path / "Doe^John 1970")


def test_fedprox_term_grows_as_weights_leave_the_global_model():
    model = torch.nn.Linear(3, 2)
    loss = ProximalLoss(torch.nn.MSELoss(), model, mu=2.0)
    x, y = torch.ones(4, 3), torch.zeros(4, 2)
    base = torch.nn.MSELoss()(model(x), y)
    assert loss(model(x), y).item() == pytest.approx(base.item())
    with torch.no_grad():
        model.weight.add_(1.0)
    moved = loss(model(x), y) - torch.nn.MSELoss()(model(x), y)
    assert moved.item() == pytest.approx(0.5 * 2.0 * 6.0)
