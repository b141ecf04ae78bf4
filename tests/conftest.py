"""Shared test settings."""
import os

# The suite checks CPU behaviour (bitwise resume, one-thread timings): keep CUDA out of it, or
# device="auto" trains on a GPU where there is one. UNDIFFUSE_TEST_CUDA=1 lets it in.
if os.environ.get("UNDIFFUSE_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The suite runs thousands of tiny ops: on a 2-core machine one intra-op thread is several
    times faster than two, and it keeps timings sane when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
