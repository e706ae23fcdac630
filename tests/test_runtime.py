"""helpers.runtime: batched inference (`run_batched`) and the default number of threads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from helpers.runtime import default_threads, run_batched, threads

pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    """fn(batch) = 2 * batch, row sums; remembers each batch's size and whether gradients were on."""

    def __init__(self):
        self.sizes, self.grad = [], []

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(xb))
        self.grad.append(torch.is_grad_enabled())
        return (2 * xb).flatten(1).sum(1, keepdim=True).double()


def test_tensor_in_batches_concatenated_in_order():
    x = torch.arange(10, dtype=torch.float32).reshape(10, 1)
    fn = Recorder()
    out = run_batched(fn, x, batch_size=4, device="cpu")
    assert fn.sizes == [4, 4, 2] and fn.grad == [False] * 3           # batches of 4, no gradients
    assert out.dtype == torch.float32 and out.shape == (10, 1)        # float32, one row per item
    assert torch.equal(out[:, 0], 2 * torch.arange(10, dtype=torch.float32))
    assert not out.is_inference() and not out.requires_grad           # an ordinary tensor


def test_list_with_prepare_builds_each_batch():
    images = [Image.new("L", (3, 2), color=v) for v in (10, 20, 30, 40, 50)]
    prepared = []

    def prepare(chunk):
        prepared.append(len(chunk))
        return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in chunk])

    out = run_batched(lambda xb: xb.mean((1, 2)).unsqueeze(1), images, batch_size=2, device="cpu", prepare=prepare)
    assert prepared == [2, 2, 1]
    assert out[:, 0].tolist() == [10, 20, 30, 40, 50]


def test_list_of_tensors_without_prepare_and_a_model():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    x = torch.randn(7, 3)
    out = run_batched(net, x, batch_size=3)                           # device None: picked (CPU here)
    with torch.no_grad():
        torch.testing.assert_close(out, net(x))
    assert not out.requires_grad


def test_dataset_of_pairs_uses_only_the_inputs():
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    y = torch.tensor([5, 5, 5, 7, 7, 7])
    fn = Recorder()
    out = run_batched(fn, TensorDataset(x, y), batch_size=4, device=torch.device("cpu"))
    assert fn.sizes == [4, 2]
    assert torch.equal(out[:, 0], 2 * x.sum(1))                       # the labels never reach fn


@pytest.mark.parametrize("empty", [torch.zeros(0, 3), [], TensorDataset(torch.zeros(0, 3), torch.zeros(0))],
                         ids=["tensor", "list", "dataset"])
def test_empty_input_gives_an_empty_tensor_without_calling_fn(empty):
    fn = Recorder()
    out = run_batched(fn, empty, batch_size=4, device="cpu")
    assert isinstance(out, torch.Tensor) and out.numel() == 0 and fn.sizes == []


def test_default_threads_follows_the_environment_and_the_cpus(monkeypatch):
    monkeypatch.setenv("FACE_COURSE_THREADS", "3")
    assert default_threads() == 3
    with threads():                                                   # threads() uses the default
        assert torch.get_num_threads() == 3
    monkeypatch.setenv("FACE_COURSE_THREADS", "0")
    assert default_threads() == 1                                     # never fewer than one
    monkeypatch.delenv("FACE_COURSE_THREADS")
    assert 1 <= default_threads() <= 8
    before = torch.get_num_threads()
    with threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before                          # restored
