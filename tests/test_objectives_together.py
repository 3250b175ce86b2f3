"""The objectives compose: L2-SP on top of distillation and of several tasks (their parts add up,
the teacher's per-view logits and the learned task weights still reach the objective underneath)."""
import pytest

from ftlab import engine
from ftlab.config import TrainConfig
from ftlab.objectives import L2SP, Distillation, MultiTask
from ftlab.runs import RunStore

FAST = dict(dataset="digits", backbone="small_cnn", weights="random", strategy="full", image_size=16,
            batch_size=64, lr=3e-3)


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "home")


def test_l2sp_over_distillation_counts_all_three_parts(store):
    teacher = engine.run(TrainConfig(**FAST, epochs=1), store=store)
    summary = engine.run(TrainConfig(**FAST, epochs=2, teacher=teacher["run_id"], l2sp=0.1, l2sp_adaptive=True),
                         store=store)
    assert summary["stopped_reason"] == "completed", summary
    assert summary["teacher"]["run_id"] == teacher["run_id"]
    for e in store.epochs(summary["run_id"]):
        assert set(e["parts"]) == {"kd", "ce", "l2sp"}
        assert sum(e["parts"].values()) == pytest.approx(e["train_loss"], rel=1e-4)
        assert e["l2sp_beta"] is not None and e["moved"]


def test_the_trainer_finds_the_objective_under_l2sp():
    base = MultiTask(("a", "b"), (2, 2), [lambda *a: None, lambda *a: None])
    trainer = engine._Trainer.__new__(engine._Trainer)
    trainer.objective = L2SP(base, [], 0.1)
    assert trainer._base_objective() is base
    trainer.objective = Distillation(lambda idx: None)
    assert trainer._base_objective() is trainer.objective
