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


@pytest.fixture(autouse=True, scope="session")
def feature_cache_in_a_temp_folder(tmp_path_factory):
    """Eval caches features under ~/.cache/sslscale by default; the suite (and the processes it starts,
    which inherit the environment) keeps them in its own temporary folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SSLSCALE_CACHE_DIR", str(tmp_path_factory.mktemp("feature_cache")))
    yield
    patch.undo()
