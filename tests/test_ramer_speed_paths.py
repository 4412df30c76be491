"""RAMer's faster CPU paths give the values of the plain ones to the bit (docs/PERFORMANCE.md §2),
and each is the path taken: float32 attention with dropout keeps its weights where a query has at
most ``d`` keys; the encoders, the grid attention and the modality completion put their rows into
zeros (or into a copy of their input) in place, with no masking pass over the whole grid after."""

from __future__ import annotations

import pytest
import torch
from conftest import random_store
from torch.utils._python_dispatch import TorchDispatchMode

import ramer.models.parts.attention as attention
from ramer.config import LossConfig, ModelConfig
from ramer.models.base import DataSpec
from ramer.models.parts import ModalityEncoder
from ramer.models.parts.context import ModalityCompletion
from ramer.models.ramer import RAMer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)

DIMS = {"text": 16, "audio": 8, "visual": 12}
VIEWS = {"view", "_unsafe_view", "expand", "unsqueeze", "squeeze", "slice", "select", "transpose", "t", "permute"}
VIEWS |= {"alias", "as_strided", "detach", "unflatten", "flatten", "reshape", "split", "chunk", "unbind"}


class _Ops(TorchDispatchMode):
    """The ATen ops a call runs that make a tensor (views left out), as (name, output shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
        if func.overloadpacket.__name__ not in VIEWS:
            self.ops.append((func.overloadpacket.__name__, shape))
        return out


def _attention_inputs(keys: int, d: int = 8, heads: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    X, Q = 3, 5
    q, k, v = (torch.randn(X, heads, n, d, requires_grad=True) for n in (Q, keys, keys))
    key_mask = torch.rand(X, keys) < 0.6
    key_mask[:, 0] = True
    return q, k, v, key_mask, torch.randn(X, heads, Q, d)


def _attention_grads(q, k, v, key_mask, grad) -> list[torch.Tensor]:
    for t in (q, k, v):
        t.grad = None
    torch.manual_seed(5)
    y = attention._AttentionWithDropout.apply(q, k, v, key_mask, 0.3)
    y.backward(grad)
    return [y.detach(), q.grad, k.grad, v.grad]


@pytest.mark.parametrize("keys", [4, 8, 11])
def test_float32_attention_keeps_its_weights_where_a_query_has_few_keys(keys, monkeypatch):
    """Where K <= d the forward's float32 weights serve backward (one softmax instead of two), and
    the output and gradients equal those of the recomputation to the bit; above d they are recomputed."""
    calls = []
    softmax_weights = attention._softmax_weights
    monkeypatch.setattr(attention, "_softmax_weights", lambda *a: calls.append(1) or softmax_weights(*a))
    inputs = _attention_inputs(keys)
    kept = _attention_grads(*inputs)
    assert len(calls) == (1 if keys <= 8 else 2)
    monkeypatch.setattr(attention, "_keeps_weights", lambda q, k: False)
    recomputed = _attention_grads(*inputs)
    for a, b in zip(kept, recomputed):
        assert torch.equal(a, b)


def test_kept_weights_survive_a_second_backward():
    """Backward does not write to the kept weights: a graph kept for a second backward gives the same gradients."""
    q, k, v, key_mask, grad = _attention_inputs(4)
    torch.manual_seed(5)
    y = attention._AttentionWithDropout.apply(q, k, v, key_mask, 0.3)
    first = torch.autograd.grad(y, (q, k, v), grad, retain_graph=True)
    second = torch.autograd.grad(y, (q, k, v), grad)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def _model() -> RAMer:
    torch.manual_seed(0)
    cfg = ModelConfig(hidden=16, heads=2, ffn=16, proj_size=8, queue_size=32)
    spec = DataSpec(dims=dict(DIMS), n_labels=5, label_names=tuple(f"l{j}" for j in range(5)), personality_dim=7)
    return RAMer(cfg, LossConfig(), spec)


def _batch():
    store = random_store(n=6, dims=tuple(DIMS.values()), n_labels=5, persons=(1, 3), segments=(2, 4), seed=1)
    return store.collate(list(range(6)))


def test_completion_writes_its_stand_ins_into_a_copy_of_its_input():
    """The completion masks its stand-ins on the rows that need one and writes those rows into a copy
    of u: no whole-grid zeros and no whole-grid ``where``. A present slot keeps u to the bit, with
    autograd or without."""
    torch.manual_seed(0)
    B, N, M, H = 4, 6, 3, 16
    completion = ModalityCompletion(H, 2, M, 0.1).eval()
    u, e_tok = torch.randn(B, N, M, H), torch.randn(B, N, H)
    present = torch.rand(B, N, M) < 0.5
    valid = torch.rand(B, N) < 0.8
    e_known = torch.rand(B, N) < 0.7
    for grad in (True, False):
        with torch.set_grad_enabled(grad), _Ops() as ops:
            out = completion(u, present, valid, e_tok, e_known)
        whole = {name for name, s in ops.ops if s in ((B, N, M, H), (B * N, M, H))}
        assert "index_copy" in whole and not whole & {"where", "zeros", "zeros_like", "new_zeros", "fill_"}
        assert torch.equal(out[present], u[present])
        needed = valid & ~present.all(-1)
        assert not torch.equal(out[needed], u[needed])  # the stand-ins were written


def test_rows_go_into_zeros_in_place_with_no_masking_pass():
    """The encoder scatters its present tokens into zeros in place and the grid attention writes its
    rows into zeros in place: no out-of-place copy of the zeros and no ``where`` over the whole
    output; a missing token's encoding is still exactly zero."""
    torch.manual_seed(0)
    enc = ModalityEncoder(6, 16, 2, 16, 1, 0.0, 8).eval()
    x, segment = torch.randn(3, 8, 6), torch.arange(8).expand(3, 8)
    present = torch.rand(3, 8) < 0.5
    present[:, 0] = True
    with torch.no_grad(), _Ops() as ops:
        out = enc(x, present, segment)
    names = [name for name, shape in ops.ops if shape == (3, 8, 16)]
    assert "scatter_" in names and "scatter" not in names and "where" not in names
    assert torch.equal(out[~present], torch.zeros_like(out[~present]))
    model, batch = _model().eval(), _batch()
    with torch.no_grad(), _Ops() as ops:
        model(batch)
    names = {name for name, _ in ops.ops}
    assert "index_copy_" in names and "index_copy" in names  # grid rows in place; the completion's copy of u
