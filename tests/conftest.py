"""Every test runs offline, with its own FTLAB_HOME and an empty feature cache."""
import os
from pathlib import Path

import pytest

from ftlab import cache

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera"


def under_ci() -> bool:
    """CI sets CI=true (.ci/run does too): there a test must not skip for want of what CI provides."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture
def hymenoptera() -> Path:
    """The real ants/bees photos in ../shared/data/hymenoptera. Without them a test is skipped,
    except under CI, which README says runs these tests: there it fails, saying what is missing."""
    if not HYMENOPTERA.is_dir():
        if under_ci():
            pytest.fail(f"{HYMENOPTERA} is missing: CI runs the tests on the real ants/bees photos, so the "
                        "shared data folder must be there (../shared/data/hymenoptera beside the repository)",
                        pytrace=False)
        pytest.skip(f"{HYMENOPTERA} is missing (the shared ants/bees photos)")
    return HYMENOPTERA


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "ftlab-home"))
    monkeypatch.delenv("FTLAB_DATA", raising=False)
    monkeypatch.setenv("FTLAB_OFFLINE", "1")  # downloads fail at once with their message
    # the cache is per process: without this a test's run would reuse an earlier test's features
    cache.SHARED.clear()
    budget = cache.SHARED.budget
    yield
    cache.SHARED.budget = budget


@pytest.fixture
def app_env(monkeypatch, tmp_path):
    """For tests that run the app: data under tmp_path (runs are under FTLAB_HOME above), and no
    Streamlit cache or training job left for the next test."""
    import streamlit as st

    monkeypatch.setenv("FTLAB_DATA", str(tmp_path / "data"))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    from ui import resources

    assert resources.registry().stop_all(timeout=60), "a training job did not stop"
    st.cache_resource.clear()
    st.cache_data.clear()
