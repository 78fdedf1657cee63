import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks on 8-32 px images: a second OpenMP thread costs more hand-off than it saves,
    and stalls whole seconds when the cores are shared with other test processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
