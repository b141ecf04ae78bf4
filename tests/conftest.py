"""Shared test settings."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The suite runs thousands of tiny ops: on a 2-core machine one intra-op thread is several
    times faster than two, and it keeps timings sane when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
