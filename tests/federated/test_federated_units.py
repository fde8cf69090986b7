"""The pure parts of federated training: refusals, pooled planning, site sampling, what a message may carry,
how a model travels, and the champion rule on the sites' paired test cases."""

from __future__ import annotations

import pytest
import torch

from pipelines.federated.federate import federated_promotion, paired_case_dice
from pipelines.federated.plan import federated_plan, pool_fingerprints, refusals
from pipelines.federated.records import (
    describe_records,
    fingerprint_records,
    model_records,
    read_fingerprint,
    received_model_dir,
    violations,
)
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


def test_evaluate_replies_may_carry_per_case_dice_lists_and_nothing_else_as_lists():
    from flwr.app import MetricRecord, RecordDict

    def check(kind: str, metrics: dict) -> list[str]:
        records = describe_records(RecordDict({"metrics": MetricRecord(metrics)}))
        return violations({"type": kind, "error": False, "records": records})

    ok = {"num-examples": 3, "dice_mean": 0.5, "case_dice": [0.4, float("nan"), 0.6],
          "champion_case_dice": [0.3, 0.2, 0.1]}
    assert check("evaluate", ok) == []
    assert check("evaluate", {**ok, "case_ids": [1.0, 2.0]}) == ["evaluate: metric 'case_ids' is not a scalar"]
    assert check("train", {"num-examples": 3, "case_dice": [0.4]}) == ["train: metric 'case_dice' is not a scalar"]


def test_a_model_travels_as_model_dir_content_without_provenance(tmp_path):
    from flwr.app import RecordDict

    from medcore.inferers.model_dir import load_model_dir, read_spec, save_model_dir
    from medcore.networks import build_network

    net = {"name": "unet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8],
           "strides": [2], "num_res_units": 1}
    sent = save_model_dir(tmp_path / "sent", build_network(net), preprocessing=[{"name": "NormalizeIntensity"}],
                          labels={"background": 0, "organ": 1}, provenance={"run_dir": "/srv/secret/run-1"})
    content = RecordDict(model_records(sent, "champion"))
    got = received_model_dir(content, "champion", tmp_path / "got")
    assert read_spec(got).provenance == {} and "/srv/secret" not in str(content["champion-spec"])
    assert read_spec(got).preprocessing == read_spec(sent).preprocessing
    a, b = load_model_dir(sent)[0].state_dict(), load_model_dir(got)[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    content["champion-spec"]["model.json"] = '{"format_version": 2}'
    with pytest.raises(ValueError, match="champion model received from the server: no 'network'"):
        received_model_dir(content, "champion", tmp_path / "bad")


def test_champion_rule_on_the_sites_paired_cases():
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    per_site = {"b": {"case_dice": [0.5, float("nan")], "champion_case_dice": [0.4, 0.3]},
                "a": {"case_dice": [0.9, 0.8, 0.7], "champion_case_dice": [0.6, float("nan"), 0.5]}}
    ours, theirs = paired_case_dice(per_site)
    assert ours == {"a:0": 0.9, "a:1": 0.8, "a:2": 0.7, "b:0": 0.5}
    assert theirs == {"a:0": 0.6, "a:2": 0.5, "b:0": 0.4, "b:1": 0.3}
    settings = {"bootstrap_samples": 200, "min_improvement": 0.0, "min_test_cases": 3}
    assert federated_promotion(None, None, ours, {}, settings, "e1") == (None, True, "no champion yet")
    champ = ModelVersion("m", "4", 0, tags=[ModelVersionTag("evaluation_set", "e0")])
    stat, promote, reason = federated_promotion(champ, {"version": "4"}, ours, theirs, settings, "e1")
    assert stat.cases == 3 and stat.champion_rescored and stat.mean_difference == pytest.approx(0.2)
    assert promote and "better than the champion with 95% confidence" in reason
    stat, promote, reason = federated_promotion(champ, {"version": "4"}, ours, theirs, {**settings,
                                                                                       "min_test_cases": 10}, "e0")
    assert not promote and not stat.champion_rescored and reason.startswith("too few test cases for a decision: 3")
    for scored in (None, {"version": "3"}):
        stat, promote, reason = federated_promotion(champ, scored, ours, theirs, settings, "e1")
        assert stat is None and not promote and "the champion (version 4)" in reason and "--fetch-champion" in reason


def test_a_site_reuses_its_optimiser_state_only_under_the_same_run_and_plan(tmp_path, caplog):
    import torch

    from medcore.engine.checkpoint import save_checkpoint
    from pipelines.federated.site import saved_optimizer_state

    path = tmp_path / "optimizer.safetensors"
    assert saved_optimizer_state(path, "1:abc") is None  # none yet
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    optimizer.param_groups[0]["params"][0].grad = torch.ones(3)
    optimizer.step()
    save_checkpoint({"key": "1:abc", "optimizer": optimizer.state_dict()}, path)
    state = saved_optimizer_state(path, "1:abc")
    assert state is not None and float(state["state"][0]["step"]) == 1.0
    assert saved_optimizer_state(path, "2:abc") is None and saved_optimizer_state(path, "1:def") is None
    path.write_bytes(b"damaged")
    assert saved_optimizer_state(path, "1:abc") is None
    assert "optimizer.safetensors not used" in caplog.text and "truncated" in caplog.text
