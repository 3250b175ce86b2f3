"""Data-parallel runs under torchrun (ftlab.distributed and the engine's use of it): two gloo processes on
the CPU against one process, rank 0 alone writing and printing, and a rank that dies or hangs ending
the run with a message and a record, never a hang."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ftlab import distributed
from ftlab.cli import main
from ftlab.paths import SettingError
from ftlab.runs import RunStore

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
SMALL = ["--dataset", "digits", "--backbone", "small_cnn", "--weights", "random", "--strategy", "full",
         "--image-size", "32", "--epochs", "3", "--batch-size", "32", "--precision", "fp32", "--json"]


def _env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    env.update(FTLAB_HOME=str(home), FTLAB_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    return env


def _torchrun(home: Path, args: list[str], logs: Path | None = None, timeout: float = 400, **env):
    """torchrun over 2 processes; with ``logs`` each rank's streams go to files there (--redirects 3)."""
    redirect = ["--log-dir", str(logs), "--redirects", "3"] if logs else []
    return subprocess.run(TORCHRUN + redirect + ["-m", "ftlab", "train", *args], cwd=ROOT, env=_env(home, **env),
                          capture_output=True, text=True, timeout=timeout)


def _single(home: Path, args: list[str]):
    return subprocess.run([sys.executable, "-m", "ftlab", "train", *args], cwd=ROOT, env=_env(home),
                          capture_output=True, text=True, timeout=400)


def _rank_log(logs: Path, rank: int, stream: str) -> str:
    found = glob.glob(str(logs / "**" / "attempt_0" / str(rank) / f"{stream}.log"), recursive=True)
    assert found, f"no {stream} log of rank {rank} under {logs}"
    return Path(found[0]).read_text()


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- the pieces, in one process ---------------------------------------------------------

def test_training_shares_are_equal_cover_the_split_and_follow_the_seed():
    for n in (1437, 7, 1):
        shares = [distributed.shard_positions(n, distributed.Ranks(r, 2), seed=3) for r in range(2)]
        assert len(shares[0]) == len(shares[1]) == -(-n // 2)  # equal: every rank takes as many steps
        assert set(torch.cat(shares).tolist()) == set(range(n))
    a = distributed.shard_positions(100, distributed.Ranks(0, 2), seed=1)
    assert torch.equal(a, distributed.shard_positions(100, distributed.Ranks(0, 2), seed=1))
    assert not torch.equal(a, distributed.shard_positions(100, distributed.Ranks(0, 2), seed=2))


def test_val_shares_hold_each_image_once():
    shares = [distributed.shard_positions(11, distributed.Ranks(r, 3)) for r in range(3)]
    assert sorted(torch.cat(shares).tolist()) == list(range(11))


def test_gather_rows_puts_rows_back_in_the_split_order(tmp_path):
    import torch.distributed as dist

    # a group of one process: its share is positions 1, 3, 0, 2 of a split of 4
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        preds, probs = distributed.gather_rows([np.array([10, 30, 0, 20]), np.eye(4)[[1, 3, 0, 2]]],
                                               torch.tensor([1, 3, 0, 2]), 4)
    finally:
        dist.destroy_process_group()
    assert preds.tolist() == [0, 10, 20, 30]
    assert probs.argmax(1).tolist() == [0, 1, 2, 3]


def test_local_batch_deals_the_global_batch():
    assert distributed.local_batch(32, distributed.Ranks(0, 2)) == 16
    assert distributed.local_batch(33, distributed.Ranks(0, 2)) == 17
    assert distributed.local_batch(32, distributed.SINGLE) == 32


def test_ranks_come_from_torchruns_environment():
    assert distributed.from_env({}) == distributed.SINGLE
    assert distributed.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == distributed.Ranks(1, 2, 1)
    with pytest.raises(SettingError, match="torchrun sets it"):
        distributed.from_env({"RANK": "one", "WORLD_SIZE": "2"})
    with pytest.raises(SettingError, match="not below WORLD_SIZE"):
        distributed.from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_a_bad_timeout_setting_is_a_sentence(monkeypatch):
    monkeypatch.setenv("FTLAB_DDP_TIMEOUT_S", "soon")
    with pytest.raises(SettingError, match="FTLAB_DDP_TIMEOUT_S"):
        distributed.timeout_s()
    for huge in ("1e30", "86401"):
        monkeypatch.setenv("FTLAB_DDP_TIMEOUT_S", huge)
        with pytest.raises(SettingError, match="at most 86,400"):
            distributed.timeout_s()


def test_a_failed_collective_is_said_in_words():
    err = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
                       "[127.0.0.1]:20707. This is typically caused by a remote worker crashing. GLHF!")
    assert distributed.is_distributed_error(err)
    message = distributed.failure_message(err)
    assert "Connection closed by peer [127.0.0.1]:20707" in message and "pair.cc" not in message
    assert "GLHF" not in message and "another process" in message
    assert not distributed.is_distributed_error(ValueError("the learning rate is too high"))


def test_the_follower_reads_the_store_and_writes_nothing(tmp_path):
    from ftlab.config import TrainConfig

    store = RunStore(tmp_path)
    store.create("20260101-000000-aaaaaa", TrainConfig().to_dict())
    follower = distributed.Follower(store)
    follower.create("20260101-000000-bbbbbb", TrainConfig().to_dict())
    follower.finish("20260101-000000-aaaaaa", "finished", {"best_val_accuracy": 1.0})
    follower.add_epoch("20260101-000000-aaaaaa", 1, {})
    assert follower.exists("20260101-000000-aaaaaa") and not store.exists("20260101-000000-bbbbbb")
    assert store.get("20260101-000000-aaaaaa").status != "finished" and store.epochs("20260101-000000-aaaaaa") == []


def test_other_commands_are_refused_under_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["runs"]) == 2
    assert "only `train` runs under torchrun" in capsys.readouterr().err


def test_mps_is_refused_under_torchrun():
    assert distributed.problems(distributed.Ranks(0, 2), torch.device("mps"))
    assert not distributed.problems(distributed.Ranks(0, 2), torch.device("cpu"))
    assert not distributed.problems(distributed.SINGLE, torch.device("mps"))


# --- two processes --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["torch", "timm"])
def test_synced_batchnorm_over_two_ranks_is_batchnorm_over_the_whole_batch(kind, tmp_path):
    logs = tmp_path / "logs"
    out = subprocess.run(TORCHRUN + ["--log-dir", str(logs), "--redirects", "3", "tests/ddp_bn_check.py", kind],
                         cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    # each rank's own stderr says why it ended (torchrun's traceback only names the signal)
    assert out.returncode == 0, (out.stderr[-1500:], [_rank_log(logs, r, "stderr")[-1500:] for r in (0, 1)])
    out = subprocess.CompletedProcess(out.args, 0, _rank_log(logs, 0, "stdout"), "")
    diffs = _json_lines(out.stdout)[-1]
    moved = diffs.pop("moved")
    assert moved > 0.01  # the running statistics did move: the comparison below is not of two untouched buffers
    assert max(diffs.values()) < 1e-4, diffs


@pytest.mark.slow
def test_two_processes_reach_one_processs_accuracy_and_rank_0_alone_writes(tmp_path):
    one = _single(tmp_path / "one", SMALL)
    assert one.returncode == 0, one.stderr[-2000:]
    single = _json_lines(one.stdout)[-1]
    logs = tmp_path / "logs"
    two = _torchrun(tmp_path / "two", SMALL, logs)
    assert two.returncode == 0, (two.stderr[-3000:], _rank_log(logs, 0, "stderr")[-3000:])
    summaries = _json_lines(_rank_log(logs, 0, "stdout"))
    assert len(summaries) == 1  # rank 0's JSON summary, once
    pair = summaries[0]
    assert pair["stopped_reason"] == "completed" and pair["epochs_run"] == 3
    assert abs(pair["best_val_accuracy"] - single["best_val_accuracy"]) <= 0.02, (pair, single)
    # the other rank printed nothing at all (no progress, no summary, no warnings)
    assert _rank_log(logs, 1, "stdout") == "" and _rank_log(logs, 1, "stderr") == ""
    assert "process 0 of 2: 719 training images, 16 of each batch of 32" in _rank_log(logs, 0, "stderr")
    store = RunStore(tmp_path / "two")
    records = store.list()
    assert [r.id for r in records] == [pair["run_id"]] and records[0].status == "finished"
    assert len(store.epochs(pair["run_id"])) == 3
    final = records[0].final["val"]
    assert len(final["predictions"]) == 360  # validation gathered from both shares: every val image
    assert final["accuracy"] == pytest.approx(pair["best_val_accuracy"])
    assert store.load_checkpoint(pair["run_id"])["epoch"] == pair["best_epoch"]


@pytest.mark.slow
def test_a_frozen_prefix_is_cached_per_rank_and_top_2_lite0_matches_one_process(tmp_path):
    args = ["--dataset", "digits", "--backbone", "efficientnet_lite0", "--strategy", "top-2", "--image-size", "64",
            "--epochs", "3", "--batch-size", "32", "--precision", "fp32", "--json"]
    one = _single(tmp_path / "one", args)
    assert one.returncode == 0, one.stderr[-2000:]
    single = _json_lines(one.stdout)[-1]
    logs = tmp_path / "logs"
    two = _torchrun(tmp_path / "two", args, logs)
    assert two.returncode == 0, (two.stderr[-3000:], _rank_log(logs, 0, "stderr")[-3000:])
    pair = _json_lines(_rank_log(logs, 0, "stdout"))[-1]
    assert abs(pair["best_val_accuracy"] - single["best_val_accuracy"]) <= 0.02, (pair, single)
    said = _rank_log(logs, 0, "stderr")
    assert "for 719 train images" in said  # its own share of the training split, cached once
    assert "on cached features of the frozen blocks" in pair["feature_cache"]


@pytest.mark.slow
def test_lp_ft_two_tasks_learned_weights_and_balanced_sampling_run_under_torchrun(tmp_path):
    args = ["--dataset", "shapes", "--shapes-per-class", "30", "--backbone", "small_cnn", "--weights", "random",
            "--strategy", "lp-ft", "--lp-epochs", "1", "--tasks", "all", "--task-weighting", "uncertainty",
            "--balanced-sampling", "--image-size", "32", "--epochs", "3", "--batch-size", "16", "--json"]
    logs = tmp_path / "logs"
    two = _torchrun(tmp_path, args, logs)
    assert two.returncode == 0, (two.stderr[-3000:], _rank_log(logs, 0, "stderr")[-3000:])
    pair = _json_lines(_rank_log(logs, 0, "stdout"))[-1]
    assert pair["stopped_reason"] == "completed" and len(pair["tasks"]) == 2
    said = _rank_log(logs, 0, "stderr")
    assert "lp-ft: the probe ends after epoch 1" in said  # the DDP wrapper made again for the blocks that train
    epochs = RunStore(tmp_path).epochs(pair["run_id"])
    weights = [e["tasks"][name]["weight"] for e in epochs for name in e["tasks"]]
    assert len(set(round(w, 6) for w in weights)) > 1  # the learned task weights moved


def _rank_pid(parent: int, rank: int, timeout: float = 60) -> int:
    """The pid of the torchrun worker of ``rank`` under ``parent`` (from the workers' environments)."""
    end = time.time() + timeout
    while time.time() < end:
        for environ in glob.glob("/proc/[0-9]*/environ"):
            try:
                env = Path(environ).read_bytes().split(b"\0")
                stat = Path(environ).with_name("stat").read_text()
            except OSError:
                continue
            if f"RANK={rank}".encode() in env and b"FTLAB_HOME" in b"".join(env) and \
                    int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                return int(Path(environ).parent.name)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} worker under {parent}")


def _start_long_run(tmp_path: Path, **env):
    args = SMALL[:-1]  # no --json; 30 epochs: long enough to kill or stop a rank mid-run
    args[args.index("--epochs") + 1] = "30"
    logs = tmp_path / "logs"
    proc = subprocess.Popen(TORCHRUN + ["--log-dir", str(logs), "--redirects", "3", "-m", "ftlab", "train", *args],
                            cwd=ROOT, env=_env(tmp_path / "home", **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    store = RunStore(tmp_path / "home")
    end = time.time() + 240
    while time.time() < end:  # until the first epoch is recorded: training is under way in both processes
        if store.db.exists() and store.list() and store.epochs(store.list()[0].id):
            return proc, store, logs
        time.sleep(0.5)
    proc.kill()
    raise AssertionError("the run did not record an epoch in time")


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_with_a_message_and_a_failed_record(tmp_path):
    proc, store, logs = _start_long_run(tmp_path)
    began = time.time()
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    proc.communicate(timeout=120)  # never a hang
    assert time.time() - began < 90
    assert proc.returncode != 0
    record = store.list()[0]
    assert record.status in ("failed", "interrupted")
    if record.status == "failed":
        assert "another process of this torchrun run" in record.message
        assert "another process of this torchrun run" in _rank_log(logs, 0, "stderr")
    assert "Traceback" not in _rank_log(logs, 0, "stderr")
    assert store.epochs(record.id) and store.checkpoint_path(record.id).exists()  # the best so far is kept


@pytest.mark.slow
def test_a_hung_rank_is_given_up_on_after_the_timeout(tmp_path):
    proc, store, logs = _start_long_run(tmp_path, FTLAB_DDP_TIMEOUT_S="15")
    rank1 = _rank_pid(proc.pid, 1)
    os.kill(rank1, signal.SIGSTOP)  # alive but silent: only the collective's timeout can end the wait
    began = time.time()
    try:
        end = time.time() + 120
        while time.time() < end and store.list()[0].status == "running":
            time.sleep(0.5)
        waited = time.time() - began
    finally:
        os.kill(rank1, signal.SIGKILL)
        proc.communicate(timeout=120)
    record = store.list()[0]
    assert record.status == "failed", record
    assert "another process of this torchrun run" in record.message and "FTLAB_DDP_TIMEOUT_S" in record.message
    assert 10 < waited < 90


def test_gloos_timeout_is_a_failed_collective_too():
    # what gloo raises on this machine when another rank hangs past the timeout (seen on an AMD EPYC host)
    err = RuntimeError("Application timeout caused pair closure")
    assert distributed.is_distributed_error(err)
    assert "another process of this torchrun run" in distributed.failure_message(err)
