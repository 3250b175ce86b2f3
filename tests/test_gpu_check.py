"""bench/gpu_check.py, the GPU path's one script: on a machine without CUDA it says so and exits
0; with ``--allow-cpu --quick`` it runs every one of its checks on the CPU at tiny sizes, so the
script a GPU session runs in its few minutes of device time cannot have rotted unseen."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "FTLAB_HOME": str(tmp_path / "home"), "FTLAB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=1800)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script measures instead")
def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert "No CUDA GPU here" in done.stdout and "unmeasured" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_every_check_runs_on_the_cpu_and_reports_its_figures(tmp_path):
    out = tmp_path / "found.json"
    done = _run(tmp_path, "--allow-cpu", "--quick", "--budget-s", "1500", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["skipped"] == []  # the quick sizes fit the default budget: every part ran
    for precision in ("fp32", "auto"):
        assert found["ceiling"][precision]["images_per_second"] > 0
        run = found["full"][precision]
        assert 0 <= run["best_val_accuracy"] <= 1 and run["images_per_second"] > 0
        assert run["of_ceiling"] > 0
    assert set(found["cache"]) == {"cold", "warm", "no cache"}
    assert "cached" in found["cache"]["warm"]["feature_cache"]
    assert found["cache_same_accuracy"] is True  # the cache changes the speed, never the result
    assert set(found["optimiser"]["ms_per_step"]) == {"fused", "foreach", "for-loop"}
    ddp = found["ddp"]  # no GPU here: two gloo processes on the CPU stand in for NCCL over several GPUs
    assert ddp["processes"] == 2 and "failed" not in ddp, ddp
    assert 0 <= ddp["best_val_accuracy"] <= 1 and ddp["images_per_second"] > 0 and ddp["speedup"] > 0
    assert json.loads(done.stdout.strip().splitlines()[-1]) == found
