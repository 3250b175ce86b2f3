"""The two C-library settings of ftlab.native: what they do, and that they leave torch working."""
import platform
import sys

import pytest
import torch

import ftlab
from ftlab import native

OPENMP = "OpenMP" in torch.__config__.parallel_info()


@pytest.mark.skipif(not OPENMP, reason="torch without OpenMP")
def test_releasing_the_openmp_pool_leaves_this_thread_working():
    """Guard: the pool that release_idle_openmp_threads frees is rebuilt on the next parallel op."""
    x = torch.randn(64, 64, 32, 32)  # large enough for a parallel region
    before, threads = (x * 1.5).sum(), torch.get_num_threads()
    released = native.release_idle_openmp_threads()
    if sys.platform.startswith("linux"):  # the torch wheels bring libgomp: it must be found and take effect
        assert native.libgomp() is not None
        assert released
    assert torch.equal((x * 1.5).sum(), before)
    assert torch.get_num_threads() == threads


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_one_malloc_arena_is_asked_for_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert ftlab.one_malloc_arena()  # glibc answers 1 when it takes a mallopt setting
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not ftlab.one_malloc_arena()  # the user's own setting wins
