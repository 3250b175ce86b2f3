"""Every test runs offline, with its own FTLAB_HOME and an empty feature cache."""
import pytest

from ftlab import cache


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
