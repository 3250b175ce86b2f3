"""Sweeps on Ray (`ftlab.ray_sweep`): the members as Ray tasks on a local cluster (a Ray started in this
process, or a head node made by `ray start --head` for the CLI test), their runs back in this store,
a killed worker retried once and then said, Stop reaching the tasks, and bad addresses said at once."""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ftlab import ray_sweep, sweep
from ftlab.config import TrainConfig
from ftlab.runs import RunStore
from ui import keys as K

ROOT = Path(__file__).resolve().parents[1]
BASE = TrainConfig(dataset="digits", backbone="small_cnn", weights="random", image_size=32, epochs=2, batch_size=32,
                   precision="fp32")
SMALL = ["--dataset", "digits", "--backbone", "small_cnn", "--weights", "random", "--image-size", "32",
         "--batch-size", "32", "--precision", "fp32"]


def _plan(strategies: str, epochs: int = 2, cpus: int = 1) -> sweep.Plan:
    plan, problems = sweep.checked_plan(dataclasses.replace(BASE, epochs=epochs), strategies, "0")
    assert plan is not None, problems
    placed, problems = ray_sweep.checked(plan, "local", cpus)
    assert placed is not None, problems
    return placed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _task_pids() -> list[int]:
    """The worker processes running a sweep task now (Ray titles them after the task)."""
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if b"ray::ftlab_sweep_task" in Path(f"/proc/{p}/cmdline").read_bytes():
                    out.append(int(p))
            except OSError:
                continue
    return out


# --- no cluster needed -----------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "nowhere", "host:port", "127.0.0.1:0", "127.0.0.1:70000", "ray://x"])
def test_an_address_that_is_not_one_is_said(text):
    with pytest.raises(ValueError, match="auto, local, HOST:PORT"):
        ray_sweep.parse_address(text)


@pytest.mark.parametrize("cpus, gpus, said", [(0, 0, "--ray-cpus"), (1.5, 0, "--ray-cpus"), (True, 0, "--ray-cpus"),
                                              (1, -1, "--ray-gpus"), (1, float("nan"), "--ray-gpus")])
def test_resources_out_of_range_are_said(cpus, gpus, said):
    with pytest.raises(ValueError, match=said):
        ray_sweep.parse_resources(cpus, gpus)


def test_nothing_listening_is_said_at_once_and_keeps_nothing(tmp_path):
    plan, _ = sweep.checked_plan(BASE, "top-1,full", "0")
    began = time.perf_counter()
    placed, problems = ray_sweep.checked(plan, f"127.0.0.1:{_free_port()}")
    assert placed is None and "nothing answers at 127.0.0.1" in problems[0] and "ray start --head" in problems[0]
    assert time.perf_counter() - began < ray_sweep.CONNECT_S + 1


def test_auto_without_a_cluster_here_is_said(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_sweep.tempfile, "gettempdir", lambda: str(tmp_path))  # no /tmp/ray/ray_current_cluster
    assert "no Ray cluster was started on this machine" in ray_sweep.problems("auto")[0]


def test_members_that_share_cached_features_go_in_one_task():
    plan = _plan("linear-probe,top-1,full,gradual", cpus=2)
    bundles = [[m.strategy for m in g.members] for g in plan.groups]
    assert bundles == [["top-1", "linear-probe", "gradual"], ["full"]]  # the shallowest boundary first; full alone
    assert all(g.threads == 2 for g in plan.groups) and plan.ray == {"address": "local", "cpus": 2, "gpus": 0.0}
    lines = sweep.plan_lines(plan)
    assert lines[0].endswith("4 runs as 2 Ray tasks") and "they share the cached features" in lines[1]
    assert plan.to_dict()["ray"]["cpus"] == 2  # kept with the sweep


def test_adopt_keeps_the_files_then_the_record_and_refuses_a_path_outside(tmp_path):
    source, target = RunStore(tmp_path / "a"), RunStore(tmp_path / "b")
    source.create("20260101-000000-aaaaaa", BASE.to_dict())
    source.add_epoch("20260101-000000-aaaaaa", 1, {"epoch": 1, "val_accuracy": 0.5})
    source.add_epoch("20260101-000000-aaaaaa", 2, {"epoch": 2, "val_accuracy": 0.7})
    source.finish("20260101-000000-aaaaaa", "finished", {"best_val_accuracy": 0.7})
    pack = ray_sweep._pack(source, "20260101-000000-aaaaaa")
    target.create("20260101-000000-aaaaaa", BASE.to_dict())  # the live copy kept while it trained
    target.add_epoch("20260101-000000-aaaaaa", 3, {"epoch": 3, "val_accuracy": 0.1})  # from a killed first try
    target.adopt(pack["record"], pack["epochs"], {"best.pt": b"weights", "export/model.onnx": b"onnx"})
    kept = target.get("20260101-000000-aaaaaa")
    assert kept.status == "finished" and kept.summary == {"best_val_accuracy": 0.7}
    assert [e["epoch"] for e in target.epochs(kept.id)] == [1, 2]  # the killed try's epoch 3 is gone
    assert target.checkpoint_path(kept.id).read_bytes() == b"weights"
    assert (target.run_dir(kept.id) / "export" / "model.onnx").read_bytes() == b"onnx"
    assert kept.id not in target.running_owners()
    with pytest.raises(Exception, match="outside its folder"):
        target.adopt(pack["record"], [], {"../../runs.db": b"x"})
    assert target.get(kept.id).status == "finished"


# --- on a Ray started in this process ----------------------------------------------------------

@pytest.mark.slow
def test_a_three_member_sweep_comes_back_to_this_store_with_live_epochs(tmp_path):
    plan = _plan("linear-probe,top-1,full")
    store, seen, ended = RunStore(tmp_path), [], []
    outcome = ray_sweep.run(plan, store=store, emit=seen.append, on_member=lambda m, s: ended.append(m.strategy))
    assert outcome.status == "finished", outcome.message
    assert sorted(ended) == ["full", "linear-probe", "top-1"]
    epochs = [(e.run_id, e.epoch) for e in seen if type(e).__name__ == "EpochEnded"]
    assert sorted(epochs) == sorted((m.run_id, k) for m in plan.members for k in (1, 2))  # each epoch, as it ended
    from ftlab import checkpoints

    for m in plan.members:
        record = store.get(m.run_id)
        assert record.status == "finished" and record.config["sweep"] == plan.sweep_id
        assert [e["epoch"] for e in store.epochs(m.run_id)] == [1, 2]
        model = checkpoints.load_model(store.load_checkpoint(m.run_id))  # the weights came back whole
        assert sum(p.numel() for p in model.parameters()) > 0
    report = sweep.report(plan.sweep_id, store)
    assert report["status"] == "finished" and report["groups"][0].startswith("Ray task 1 of 2 on local")
    assert report["comparison"]["pick"]["reason"]
    assert not store.running_owners()


@pytest.mark.slow
@pytest.mark.parametrize("kills, status", [(1, "finished"), (2, "failed")])
def test_a_killed_worker_is_retried_once_then_its_member_fails_with_the_reason(tmp_path, kills, status):
    plan = _plan("full", epochs=4)
    store, result = RunStore(tmp_path), {}
    run_id = plan.members[0].run_id
    thread = threading.Thread(target=lambda: result.update(outcome=ray_sweep.run(plan, store=store)))
    thread.start()
    killed: set[int] = set()
    end = time.time() + 300
    while thread.is_alive() and len(killed) < kills and time.time() < end:
        time.sleep(0.2)
        fresh = [p for p in _task_pids() if p not in killed]
        if fresh and store.exists(run_id) and store.epochs(run_id):  # this try is training: it has posted an epoch
            os.kill(fresh[0], signal.SIGKILL)
            killed.add(fresh[0])
            while store.epochs(run_id) and time.time() < end and kills > len(killed):
                time.sleep(0.2)  # the next try posts epoch 1 again; wait for a new worker before the next kill
                if [p for p in _task_pids() if p not in killed]:
                    break
    thread.join(400)
    assert len(killed) == kills and not thread.is_alive()
    record = store.get(run_id)
    assert record.status == status, record.message
    if status == "failed":
        assert "worker died on both tries" in record.message and "ray logs" in record.message
        assert "1 of 1 runs failed" in result["outcome"].message
    else:
        assert [e["epoch"] for e in store.epochs(run_id)] == list(range(1, 5))
    assert not store.running_owners()


@pytest.mark.slow
def test_stop_reaches_the_tasks_and_their_members_come_back_stopped(tmp_path):
    plan = _plan("top-1,full", epochs=30)
    store, stop, result = RunStore(tmp_path), threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(outcome=ray_sweep.run(plan, store=store, stop=stop)))
    thread.start()
    end = time.time() + 300
    while not any(store.exists(m.run_id) and store.epochs(m.run_id) for m in plan.members) and time.time() < end:
        time.sleep(0.2)
    stop.set()
    thread.join(120)
    assert not thread.is_alive(), "Stop did not reach the tasks"
    assert result["outcome"].status == "stopped"
    statuses = {store.get(m.run_id).status for m in plan.members if store.exists(m.run_id)}
    assert statuses <= {"stopped"} and statuses, statuses
    assert all(len(store.epochs(m.run_id)) < 30 for m in plan.members if store.exists(m.run_id))
    assert not store.running_owners()


# --- the CLI against a head node, and the page --------------------------------------------------

@pytest.mark.slow
def test_the_cli_runs_a_sweep_on_a_head_node_made_by_ray_start(tmp_path):
    port = _free_port()
    env = {**os.environ, "FTLAB_HOME": str(tmp_path / "home"), "FTLAB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    (tmp_path / "token").write_text("ftlab-test-" + os.urandom(16).hex())
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths under it have a length limit
    log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen([str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
                             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.time() + 60
        while time.time() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        out = subprocess.run([sys.executable, "-m", "ftlab", "sweep", *SMALL, "--epochs", "1", "--strategies",
                              "linear-probe,top-1,full", "--ray", f"127.0.0.1:{port}", "--json"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=400)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
    assert out.returncode == 0, (out.stderr[-3000:], (tmp_path / "head.log").read_text()[-2000:])
    import json

    report = json.loads(out.stdout.splitlines()[-1])
    assert report["status"] == "finished" and len(report["members"]) == 3
    assert all(m["status"] == "finished" for m in report["members"])
    assert "3 runs as 2 Ray tasks" in out.stderr and "epoch 1/1" in out.stderr  # the epochs came as they ended


def test_the_cli_says_a_bad_address_and_keeps_nothing(tmp_path):
    env = {**os.environ, "FTLAB_HOME": str(tmp_path), "FTLAB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for args, said in ((["--ray", f"127.0.0.1:{_free_port()}"], "nothing answers at"),
                       (["--ray", "local", "--ray-cpus", "0"], "--ray-cpus is the CPU cores"),
                       (["--ray-gpus", "1"], "give them with --ray ADDRESS")):
        out = subprocess.run([sys.executable, "-m", "ftlab", "sweep", *SMALL, "--strategies", "top-1", *args], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not RunStore(tmp_path).sweeps()


def test_the_sweep_page_says_an_unreachable_cluster_and_starts_nothing(app_env):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/model.py").run()
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    at.switch_page("app_pages/sweep.py").run()
    at.multiselect(key=K.SWEEP_STRATEGIES).set_value(["top-1"])
    at.text_input(key=K.SWEEP_RAY).set_value(f"127.0.0.1:{_free_port()}")
    at.button(key=K.SWEEP_START).click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("nothing answers at 127.0.0.1" in e.value for e in at.error), [e.value for e in at.error]
    from ui import resources

    assert resources.background(at.session_state[K.OWNER], "sweep") is None
    at.text_input(key=K.SWEEP_RAY).set_value("not an address")
    at.button(key=K.SWEEP_START).click().run()
    assert any("auto, local, HOST:PORT" in e.value for e in at.error), [e.value for e in at.error]


@pytest.mark.slow
def test_a_sweep_started_on_the_page_runs_on_ray_and_fills_in(app_env):
    from ui import resources

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("app_pages/model.py").run()
    at.selectbox(key="cfg.backbone").select("small_cnn").run()
    at.session_state["cfg.image_size"], at.session_state["cfg.epochs"] = 16, 1
    at.switch_page("app_pages/sweep.py").run()
    at.multiselect(key=K.SWEEP_STRATEGIES).set_value(["linear-probe", "top-1"])
    at.text_input(key=K.SWEEP_RAY).set_value("local")
    at.number_input(key=K.SWEEP_RAY_CPUS).set_value(2)
    at.button(key=K.SWEEP_START).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    job = resources.background(at.session_state[K.OWNER], "sweep")
    assert job is not None and job.join(400), "the sweep on Ray did not end"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    plan = at.dataframe[0].value
    assert sorted(plan["strategy"]) == ["linear-probe", "top-1"] and set(plan["status"]) == {"finished"}
    where = " ".join(c.value for c in at.caption)
    assert "Ray task 1 of 1 on local, 2 threads" in where, where


@pytest.mark.slow
def test_a_task_no_node_can_take_is_said_and_keeps_nothing(tmp_path):
    plan, _ = sweep.checked_plan(BASE, "top-1", "0")
    placed, _ = ray_sweep.checked(plan, "local", 1, 1)  # a GPU, on a machine without one
    store = RunStore(tmp_path)
    outcome = ray_sweep.run(placed, store=store)
    assert outcome.status == "failed" and "no node of the cluster has that many" in outcome.message, outcome.message
    assert "--ray-gpus" in outcome.message and not store.sweeps() and not store.list()
