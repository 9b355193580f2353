import pytest
import torch
from oc_helpers import sort_checkpoint


@pytest.fixture(scope="session")
def sort_ckpt(tmp_path_factory):
    """The briefly trained sort checkpoint (oc_helpers.sort_checkpoint), trained once for the
    OpenCompass run and the ELBO tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    path = sort_checkpoint(tmp_path_factory.mktemp("sort") / "ckpt")
    torch.set_num_threads(before)
    return path
