import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tests train tiny models on tiny images: a second intra-op thread costs more hand-off than it
    saves, and with the 2 cores shared by other test processes the threads spin-wait for each other
    (a tiny linear fit ran 25x slower, a width-8 forward pass stalled for seconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
