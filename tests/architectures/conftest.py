import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny networks run fastest on one thread (and do not stall when other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
