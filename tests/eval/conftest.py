import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The eval tests train tiny models: with other tests loading the 2 cores, intra-op threads spend
    most of each step spin-waiting for each other (25x slower measured), so they run on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
