"""Every test runs offline, with its own FTLAB_HOME, whatever the machine has lying around."""
import pytest


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FTLAB_HOME", str(tmp_path / "ftlab-home"))
    monkeypatch.delenv("FTLAB_DATA", raising=False)
    monkeypatch.setenv("FTLAB_OFFLINE", "1")  # downloads fail at once with their message
    yield
