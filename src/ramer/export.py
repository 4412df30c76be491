"""``ramer export RUN_DIR --onnx OUT.onnx [--check]``: the eval forward of a trained run as ONNX.

The ONNX graph takes the scene grid as plain tensors (no ``Batch``); every size is dynamic:
``B`` scenes, ``P`` persons, ``S`` segments (``N = P * S`` tokens, person-major as in ``Batch``).
A scene smaller than the grid is padded (``valid`` False), as ``SceneStore.collate`` pads a batch;
``batch_to_grid`` gives these inputs for a collated ``Batch`` (not for scenes of several marked
target tokens, MEmoR's clip protocol: the graph takes one target token or the whole scene).

===========================  =====================  ===============================================
input                        shape / dtype          meaning
===========================  =====================  ===============================================
``text, audio, visual``      (B, P, S, d_m) float   token features (ignored where not present)
``present``                  (B, P, S, 3) bool      presence of text / audio / visual per token
``valid``                    (B, P, S) bool         False on padding
``target``                   (B,) int64             target token ``p * S + s`` of a valid token (``S``:
                                                    the grid's); -1: whole scene. Not checked: one
                                                    outside the scene is an error in some models and
                                                    a score of nothing in others
``personality``              (B, P, d_pi) float     only when the model reads personality
``personality_present``      (B, P) bool            only with ``personality``
===========================  =====================  ===============================================

``S`` is at most ``model.max_segments`` (512 by default) for the models with a segment-position
table (``ramer``, ``ramer-authors``, ``mlgcn``, ``hhmpn``): onnxruntime refuses a longer grid.

Output ``probs`` (B, C): the model's fp32 probabilities, those of ``ramer.load(RUN_DIR).predict``
for a run trained in fp32 (a run trained with ``train.precision=bf16`` is scored there under bf16
autocast, as its test was; the graph stays fp32). The file's metadata (``metadata_props``) says how
to read them: ``ramer.labels`` (a JSON list of the C label names, in column order), ``ramer.task``,
``ramer.version`` (the ramer that wrote it) and, when given, ``ramer.threshold`` (the run's
decision, as ``predict`` writes it: a number, one per label, or ``"argmax"``).

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` then ONNX), with ``B``, ``P``
and ``S`` as dynamic dimensions. A model whose scores are not finite is refused before anything is
written. ``--check`` runs onnxruntime on random scenes of a batch and grid size different from the
export example and compares with torch (max abs difference of the probabilities at most ``1e-4``),
on the written file before it replaces the one at ``--onnx``: a failed check leaves that as it was.
The ONNX packages are the optional extra ``ramer[onnx]``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ramer.batch import MODALITIES, ROLE_NONE, Batch
from ramer.errors import RamerError
from ramer.paths import atomic_write
from ramer.version import __version__

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
EXAMPLE_SHAPE = (3, 2, 5)  # (B, P, S) of the export example
CHECK_SHAPES = ((5, 3, 7), (2, 1, 9))  # other sizes for --check (P = 1 is the MOSEI grid)
TOLERANCE = 1e-4


def missing_onnx_packages() -> list[str]:
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def require_onnx(runtime: bool = True) -> None:
    """A clear error when the optional ONNX dependencies are not installed."""
    needed = ONNX_PACKAGES if runtime else ONNX_PACKAGES[:2]
    missing = [name for name in missing_onnx_packages() if name in needed]
    if missing:
        raise RamerError(
            f"ONNX export needs the optional packages {', '.join(missing)}: "
            "pip install 'ramer[onnx]' (or: pip install onnx onnxscript onnxruntime)"
        )


class GridModel(nn.Module):
    """A model's eval forward with grid-shaped tensors in and ``probs`` out (what ONNX sees)."""

    def __init__(self, model: nn.Module, label_names: tuple[str, ...], personality: bool) -> None:
        super().__init__()
        self.model = model
        self.label_names = tuple(label_names)
        self.personality = personality

    def input_names(self) -> list[str]:
        names = [*MODALITIES, "present", "valid", "target"]
        return names + (["personality", "personality_present"] if self.personality else [])

    def forward(
        self,
        text: Tensor,
        audio: Tensor,
        visual: Tensor,
        present: Tensor,
        valid: Tensor,
        target: Tensor,
        personality: Tensor | None = None,
        personality_present: Tensor | None = None,
    ) -> Tensor:
        return self.model(
            grid_batch(text, audio, visual, present, valid, target, personality, personality_present, self.label_names)
        ).probs


def grid_batch(
    text: Tensor,
    audio: Tensor,
    visual: Tensor,
    present: Tensor,
    valid: Tensor,
    target: Tensor,
    personality: Tensor | None,
    personality_present: Tensor | None,
    label_names: tuple[str, ...],
) -> Batch:
    """The ``Batch`` that ``SceneStore.collate`` builds, from grid-shaped tensors (traceable)."""
    B, P, S = valid.shape
    N = P * S
    device = valid.device
    person_valid = valid.any(-1)  # (B, P)
    valid = valid.reshape(B, N)
    pres = present.reshape(B, N, 3) & valid.unsqueeze(-1)
    feats = {m: x.reshape(B, N, x.shape[-1]) for m, x in zip(MODALITIES, (text, audio, visual))}
    feats = {m: torch.where(pres[..., k : k + 1], feats[m], 0.0) for k, m in enumerate(MODALITIES)}
    person = torch.arange(P, device=device).view(1, P, 1).expand(B, P, S).reshape(B, N)
    segment = torch.arange(S, device=device).view(1, 1, S).expand(B, P, S).reshape(B, N)
    target_person = torch.div(target, S, rounding_mode="floor")  # (B,)
    scope = valid & ((target < 0).unsqueeze(1) | (person == target_person.unsqueeze(1)))
    if personality is not None:
        personality_present = personality_present & person_valid
        personality = torch.where(personality_present.unsqueeze(-1), personality, 0.0)
    return Batch(
        features=feats,
        present={m: pres[..., k] for k, m in enumerate(MODALITIES)},
        valid=valid,
        person=person,
        segment=segment,
        grid=(P, S),
        target=target,
        scope=scope,
        personality=personality,
        personality_present=personality_present,
        labels=torch.zeros(B, len(label_names), device=device),
        role=torch.full((B,), ROLE_NONE, dtype=torch.long, device=device),
        label_names=label_names,
        ids=[],
    )


def batch_to_grid(batch: Batch, personality: bool) -> dict[str, np.ndarray]:
    """The ONNX inputs of a collated ``Batch`` (e.g. from ``SceneStore.collate``). A scene whose scope
    is not what its ``target`` gives (several marked target tokens: MEmoR's clip protocol) is refused:
    the graph has no input for it and would pool over the whole scene. ``personality`` asked of a
    batch without it (data with no personality for a graph that takes it) is refused too."""
    if personality and batch.personality is None:
        raise RamerError(
            "the batch has no personality (its data holds none), which the graph takes (personality, "
            "personality_present); score data with personality, or export a run trained without it"
        )
    B = batch.size
    P, S = batch.grid
    target_person = torch.div(batch.target, S, rounding_mode="floor").unsqueeze(1)
    implied = batch.valid & ((batch.target < 0).unsqueeze(1) | (batch.person == target_person))
    apart = (implied != batch.scope).any(1).nonzero().flatten().tolist()
    if apart:
        first = repr(batch.ids[apart[0]]) if len(batch.ids) == B else f"{apart[0]} of the batch"
        raise RamerError(
            f"scene {first} ({len(apart)} of {B}): its target is several marked tokens, which the ONNX graph has no "
            "input for (it would score the whole scene); score such data with ramer predict or ramer.load"
        )
    out = {m: batch.features[m].reshape(B, P, S, -1).float().cpu().numpy() for m in MODALITIES}
    out["present"] = torch.stack([batch.present[m] for m in MODALITIES], -1).reshape(B, P, S, 3).cpu().numpy()
    out["valid"] = batch.valid.reshape(B, P, S).cpu().numpy()
    out["target"] = batch.target.long().cpu().numpy()
    if personality:
        out["personality"] = batch.personality.float().cpu().numpy()
        out["personality_present"] = batch.personality_present.cpu().numpy()
    return out


def random_inputs(
    shape: tuple[int, int, int], dims: dict[str, int], personality_dim: int | None, seed: int
) -> dict[str, np.ndarray]:
    """Random scenes in the ONNX input layout: ragged grids (padding), missing modalities, targets."""
    B, P, S = shape
    rng = np.random.default_rng(seed)
    persons = rng.integers(1, P + 1, B)
    persons[0] = P
    segments = rng.integers(1, S + 1, B)
    segments[-1] = S
    valid = (np.arange(P)[None, :, None] < persons[:, None, None]) & (
        np.arange(S)[None, None, :] < segments[:, None, None]
    )
    present = (rng.random((B, P, S, 3)) < 0.6) & valid[..., None]
    out = {m: rng.normal(size=(B, P, S, dims[m])).astype(np.float32) for m in MODALITIES}
    out["present"] = present
    out["valid"] = valid
    tp, ts = rng.integers(0, persons), rng.integers(0, segments)
    target = np.where(rng.random(B) < 0.8, tp * S + ts, -1).astype(np.int64)
    out["target"] = target
    if personality_dim is not None:
        pvalid = np.arange(P)[None, :] < persons[:, None]
        out["personality"] = rng.normal(size=(B, P, personality_dim)).astype(np.float32)
        out["personality_present"] = pvalid & (rng.random((B, P)) < 0.8)
    return out


def uses_personality(model: nn.Module, spec) -> bool:
    """Whether the export takes personality inputs: the data has personality, and the model has a
    ``personality`` part (this package's models that read it, trained or not) or its scores (eval
    mode) change with other personality vectors (a model of another package, whatever its parts are
    called)."""
    if spec.personality_dim is None:
        return False
    if getattr(model, "personality", None) is not None:
        return True
    inputs = random_inputs(EXAMPLE_SHAPE, spec.dims, spec.personality_dim, seed=0)
    wrapper = GridModel(model, spec.label_names, personality=True).eval()
    names = wrapper.input_names()
    other = {**inputs, "personality": inputs["personality"] + 1.0}
    with torch.inference_mode():
        a, b = (wrapper(*(torch.from_numpy(x[n]) for n in names)) for x in (inputs, other))
    return not torch.equal(a, b)


@dataclass
class CheckResult:
    shape: tuple[int, int, int]
    max_abs_diff: float


@contextlib.contextmanager
def quiet_log(name: str):
    """Only errors from the logger ``name`` and its children for the duration (torch's exporter
    warns once per torchvision operator it skips when torchvision is not installed, which we never
    need)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def export_onnx(
    model: nn.Module,
    spec,
    path: str | Path,
    opset: int | None = None,
    threshold: float | list | str | None = None,
    check: Callable[[GridModel, str], object] | None = None,
) -> GridModel:
    """Export ``model`` (eval mode) to ``path`` with dynamic B, P and S; returns the wrapper.
    ``threshold``: the run's decision, written to the file's metadata with the label names.
    ``check(wrapper, file)``: run on the written file before it replaces ``path`` (``check_onnx``,
    ``ramer export --check``); a RamerError it raises leaves the file at ``path`` as it was."""
    require_onnx(runtime=False)
    from torch.export import Dim

    model = model.cpu().eval()
    with_pers = uses_personality(model, spec)
    wrapper = GridModel(model, spec.label_names, with_pers).eval()
    example = random_inputs(EXAMPLE_SHAPE, spec.dims, spec.personality_dim if with_pers else None, seed=0)
    names = wrapper.input_names()
    args = tuple(torch.from_numpy(example[n]) for n in names)
    with torch.inference_mode():
        finite = bool(torch.isfinite(wrapper(*args)).all())
    if not finite:  # a graph of NaN scores, which --check would call a NaN difference
        raise RamerError(
            f"model {type(model).__name__}: its scores are NaN or infinite (a damaged or diverged model); "
            f"{path} not written"
        )
    max_s = int(getattr(getattr(model, "cfg", None), "max_segments", 4096))
    b, p, s = Dim("batch", min=1, max=1 << 16), Dim("persons", min=1, max=4096), Dim("segments", min=1, max=max_s)
    grid = {0: b, 1: p, 2: s}
    dyn = {m: grid for m in MODALITIES}
    dyn.update(present=grid, valid=grid, target={0: b})
    if with_pers:
        dyn.update(personality={0: b, 1: p}, personality_present={0: b, 1: p})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {} if opset is None else {"opset_version": opset}
    kwargs["custom_translation_table"] = _translations()

    def write(tmp: str) -> None:  # a temporary file renamed to path: a failed export leaves path as it was
        # torch.fx: a failed trace's warning naming its data-dependent symbol, the error says it again
        with torch.no_grad(), warnings.catch_warnings(), quiet_log("torch.onnx"), quiet_log("torch.fx"):
            warnings.simplefilter("ignore", UserWarning)  # axis-name notes of the dynamic-shape renaming
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside the exporter
            torch.onnx.export(
                wrapper,
                args,
                tmp,
                dynamo=True,
                input_names=names,
                output_names=["probs"],
                dynamic_shapes={n: dyn[n] for n in names},
                external_data=False,
                verbose=False,
                **kwargs,
            )
        if os.path.getsize(tmp) == 0:
            raise RamerError(f"ONNX export wrote nothing to {path}")
        add_metadata(tmp, spec, threshold)
        if check is not None:
            try:
                check(wrapper, tmp)
            except RamerError as e:
                raise RamerError(f"{e}; {path} not written") from None

    atomic_write(path, write)
    return wrapper


def add_metadata(path: str | Path, spec, threshold: float | list | str | None = None) -> None:
    """Write what reading the output takes into the ONNX file's ``metadata_props``: the label names
    in column order, the task and the decision (``"argmax"`` on single-label data); and the ramer
    version that wrote it."""
    import onnx

    graph = onnx.load(str(path))
    if threshold is None and spec.single_label:
        threshold = "argmax"
    if threshold is not None and not isinstance(threshold, str):  # a number, numpy's too, or one per label
        threshold = np.asarray(threshold, dtype=np.float64).tolist()
    props = {"ramer.labels": json.dumps(list(spec.label_names)), "ramer.task": spec.task, "ramer.version": __version__}
    if threshold is not None:
        props["ramer.threshold"] = json.dumps(threshold)
    onnx.helper.set_model_props(graph, props)
    onnx.save(graph, str(path))


def _translations() -> dict:
    """ONNX translations the exporter lacks: integer ``tensor % symbolic size`` (``aten.remainder.Scalar``
    with a dynamic divisor, as in ``target % S``)."""
    import onnx
    from onnxscript import opset18 as op

    def remainder_scalar(self, other):
        return op.Mod(self, op.CastLike(other, self))  # fmod=0: Python's sign convention, as torch

    def repeat_interleave_int(self, repeats, dim=None, output_size=None):
        """``x.repeat_interleave(r, dim)`` with a dynamic ``r``: unsqueeze, expand, merge."""
        rank = len(self.shape)
        d = 0 if dim is None else dim % rank
        if dim is None:
            self, rank = op.Reshape(self, op.Constant(value_ints=[-1])), 1
        shape = op.Shape(self)
        r = op.Reshape(op.Cast(repeats, to=onnx.TensorProto.INT64), op.Constant(value_ints=[1]))
        head = op.Slice(shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[d + 1]))
        tail = op.Slice(shape, op.Constant(value_ints=[d + 1]), op.Constant(value_ints=[rank]))
        size = op.Slice(shape, op.Constant(value_ints=[d]), op.Constant(value_ints=[d + 1]))
        lead = op.Slice(shape, op.Constant(value_ints=[0]), op.Constant(value_ints=[d]))
        grown = op.Expand(op.Unsqueeze(self, op.Constant(value_ints=[d + 1])), op.Concat(head, r, tail, axis=0))
        return op.Reshape(grown, op.Concat(lead, op.Mul(size, r), tail, axis=0))

    return {
        torch.ops.aten.remainder.Scalar: remainder_scalar,
        torch.ops.aten.repeat_interleave.self_int: repeat_interleave_int,
    }


def check_onnx(
    wrapper: GridModel, spec, path: str | Path, shapes=CHECK_SHAPES, tolerance: float = TOLERANCE
) -> list[CheckResult]:
    """Run the ONNX file with onnxruntime at other sizes and compare with torch; raise if off."""
    require_onnx(runtime=True)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed_names = [i.name for i in session.get_inputs()]
    results = []
    for k, shape in enumerate(shapes):
        inputs = random_inputs(shape, spec.dims, spec.personality_dim if wrapper.personality else None, seed=100 + k)
        with torch.inference_mode():
            ref = wrapper(*(torch.from_numpy(inputs[n]) for n in wrapper.input_names())).float().numpy()
        got = session.run(["probs"], {n: inputs[n] for n in feed_names})[0]
        if got.shape != ref.shape:
            raise RamerError(f"ONNX check at (B, P, S) = {shape}: output shape {got.shape}, torch {ref.shape}")
        diff = float(np.abs(got - ref).max())
        results.append(CheckResult(shape, diff))
        if not diff <= tolerance:
            raise RamerError(f"ONNX check at (B, P, S) = {shape}: max abs difference {diff:.3g} > {tolerance:g}")
    return results
