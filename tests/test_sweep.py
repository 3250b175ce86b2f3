"""The sweep of freeze strategies: its plan, the derived-boundary cache, decoding once, the member runs
kept and tagged, parallel processes, a stop, and the CLI."""
import json
from dataclasses import replace

import pytest
import torch

from ftlab import cache, cli, engine, sweep
from ftlab.config import TrainConfig
from ftlab.data import prepared
from ftlab.runs import RunStore

BASE = TrainConfig(dataset="digits", backbone="small_cnn", weights="random", image_size=16, batch_size=64, epochs=1,
                   precision="fp32")


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


@pytest.fixture(autouse=True)
def empty_cache():
    cache.SHARED.clear()
    yield
    cache.SHARED.clear()


def _train_features(boundary: str) -> torch.Tensor:
    found = [t for k, t in cache.SHARED._entries.items() if k.split == "train" and k.boundary == boundary]
    assert len(found) == 1, [k.boundary for k in cache.SHARED._entries]
    return found[0]


def test_a_deeper_boundary_derived_from_a_shallower_one_equals_the_one_computed_from_the_images(store):
    shallow = engine.run(replace(BASE, strategy="top-3"), store=store)
    derived = engine.run(replace(BASE, strategy="top-1"), store=store)
    assert "derived from the cached output of stem" in derived["feature_cache"], derived["feature_cache"]
    assert "derived" not in shallow["feature_cache"]
    from_shallow = _train_features("stage3").clone()
    cache.SHARED.clear()
    direct = engine.run(replace(BASE, strategy="top-1"), store=store)
    assert "derived" not in direct["feature_cache"]
    from_images = _train_features("stage3")
    assert from_shallow.shape == from_images.shape and from_shallow.dtype == from_images.dtype
    scale = from_images.abs().max()
    assert (from_shallow - from_images).abs().max() <= 1e-5 * scale  # the same function, up to float rounding
    # and so the same training: the run on derived features reaches the run on direct ones
    assert derived["best_val_accuracy"] == pytest.approx(direct["best_val_accuracy"], abs=2 / 360)


def test_the_plan_runs_the_shallowest_cached_boundary_first_and_full_fine_tuning_apart():
    plan = sweep.make_plan(BASE, "linear-probe,top-1,full,top-3,gradual", "0,1", cores=2, device="cpu")
    shared = [m for m in plan.groups[0].members if m.shares]
    alone = [m for m in plan.members if not m.shares]
    assert [m.strategy for m in shared if m.seed == 0] == ["top-3", "top-1", "linear-probe", "gradual"]
    assert [m.frozen for m in shared] == sorted(m.frozen for m in shared)
    assert {m.strategy for m in alone} == {"full"} and all(not m.shares for m in alone)
    assert len(plan.groups) == 2 and all(g.threads == 1 for g in plan.groups)
    assert [m.strategy for m in plan.groups[1].members] == ["full"]  # in parallel with the shared ones
    assert len({m.run_id for m in plan.members}) == 10
    # one core or a GPU: everything in this process
    assert len(sweep.make_plan(BASE, "top-1,full", "0", cores=1, device="cpu").groups) == 1
    assert sweep.make_plan(BASE, "top-1,full", "0", cores=8, device="cuda").groups[0].where == "this process"
    # every member: the sweep's tag and the same split
    configs = [plan.config(m) for m in plan.members]
    assert {c.sweep for c in configs} == {plan.sweep_id} and {c.split_seed for c in configs} == {0}


def test_strategies_and_seeds_are_refused_in_sentences():
    with pytest.raises(ValueError, match="unknown strategy 'top3'"):
        sweep.parse_strategies("linear-probe,top3")
    with pytest.raises(ValueError, match="at least one strategy"):
        sweep.parse_strategies(" , ")
    with pytest.raises(ValueError, match="whole numbers"):
        sweep.parse_seeds("0,one")
    assert sweep.parse_seeds("2, 0,2") == (2, 0)


def test_a_sweep_keeps_every_member_decodes_once_and_pairs_them_on_one_val_split(store, monkeypatch):
    decodes = []
    real = prepared.decode
    monkeypatch.setattr(prepared, "decode", lambda *a, **kw: decodes.append(kw.get("split")) or real(*a, **kw))
    plan = sweep.make_plan(BASE, "linear-probe,top-1", "0,1", workers=1)
    ended = []
    outcome = sweep.run(plan, store=store, on_member=lambda m, s: ended.append(m.run_id))
    assert outcome.status == "finished" and sorted(ended) == sorted(m.run_id for m in plan.members)
    assert decodes == ["train", "val"]  # four runs, one decoding
    records = [store.get(m.run_id) for m in plan.members]
    assert {r.status for r in records} == {"finished"} and {r.config["sweep"] for r in records} == {plan.sweep_id}
    assert len({tuple(r.final["val"]["indices"]) for r in records}) == 1  # seeds 0 and 1 on the same val images
    seeds = {(r.config["strategy"], r.config["seed"]) for r in records}
    assert seeds == {("linear-probe", 0), ("linear-probe", 1), ("top-1", 0), ("top-1", 1)}
    kept = store.sweep(plan.sweep_id)
    assert kept["status"] == "finished" and len(kept["plan"]["members"]) == 4
    rep = sweep.report(plan.sweep_id, store)
    assert [m["status"] for m in rep["members"]] == ["finished"] * 4
    # outside a sweep every run decodes its own data again
    engine.run(replace(BASE, strategy="top-1"), store=store)
    assert decodes == ["train", "val", "train", "val"]


def test_members_that_share_nothing_run_in_parallel_processes(store):
    plan = sweep.make_plan(BASE, "top-1,full", "0", cores=2, device="cpu")
    assert len(plan.groups) == 2
    outcome = sweep.run(plan, store=store)
    assert outcome.status == "finished", outcome.message
    assert {store.get(m.run_id).status for m in plan.members} == {"finished"}


def test_a_stopped_sweep_says_so_and_leaves_the_rest_unrun(store):
    import threading

    stop = threading.Event()
    plan = sweep.make_plan(BASE, "top-1,linear-probe", "0", workers=1)
    stop.set()
    outcome = sweep.run(plan, store=store, stop=stop)
    assert outcome.status == "stopped" and "0 of 2" in outcome.message
    assert [m["status"] for m in sweep.report(plan.sweep_id, store)["members"]] == ["not run", "not run"]


def test_the_cli_runs_a_sweep_and_prints_its_summary_as_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "cli"))
    code = cli.main(["sweep", "--dataset", "digits", "--backbone", "small_cnn", "--weights", "random",
                     "--image-size", "16", "--epochs", "1", "--strategies", "linear-probe,top-1", "--workers", "1",
                     "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rep = json.loads(out.out.strip().splitlines()[-1])
    assert [m["strategy"] for m in rep["members"]] == ["top-1", "linear-probe"]
    assert "this process" in out.err
    assert cli.main(["sweep", "--list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]["id"] == rep["sweep_id"]
    assert cli.main(["sweep", "--dataset", "digits", "--strategies", "top3"]) == 2
    assert "unknown strategy 'top3'" in capsys.readouterr().err


def test_data_efficiency_points_train_on_fewer_images_and_skip_what_is_not_cheap(store):
    plan = sweep.make_plan(BASE, "linear-probe,full", "0", workers=1, per_class="5,2")
    points = [(m.strategy, m.per_class) for m in plan.members]
    assert sorted(points) == [("full", 0), ("linear-probe", 0), ("linear-probe", 2), ("linear-probe", 5)]
    assert "every block trains" in plan.skipped["full"] and "linear-probe" not in plan.skipped
    outcome = sweep.run(plan, store=store)
    assert outcome.status == "finished", outcome.message
    for m in plan.members:
        record = store.get(m.run_id)
        train, val = record.split["train"], record.split["val"]
        assert len(train) == (10 * m.per_class if m.per_class else 1437) and len(val) == 360
    with pytest.raises(ValueError, match="start at 1"):
        sweep.parse_per_class("0,2")
