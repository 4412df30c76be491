"""What every model must do with missing modalities, checked on tiny multi-label data: ``check(name)`` for a
model of another package (``register_model`` or an installed one) before a long run, the same
properties ``tests/test_baselines.py`` pins for ramer's own models.

The checks, each a RamerError naming the model, the check and the pattern where it fails:

- ``patterns``: for every missing pattern (the embedded benchmark's scenes as they are, no visual
  anywhere, nobody speaking, text only, a first scene with nothing present in its scope, the target
  token absent, whole-scene samples) a training-mode forward gives ``(B, C)`` probs in [0, 1], a
  finite loss and finite gradients, and an eval-mode forward finite probs;
- ``masked``: in eval mode, noise (1e4) or NaN under a False presence mask changes no score;
- ``batch``: in eval mode, a sample's scores do not depend on the other samples of its batch;
- ``labels``: in eval mode, the scores do not read ``batch.labels`` (scoring gives them zeroed,
  ``infer.batch_scores``, and a model that reads them trains on what it will not get).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch

from ramer.batch import MODALITIES, ROLE_NONE, Batch
from ramer.config import build_config, resolve_config
from ramer.errors import RamerError

CHECKS = ("patterns", "masked", "batch", "labels")
TINY = ["data.synthetic.n_train=12", "data.synthetic.n_valid=4", "data.synthetic.n_test=4", "model.hidden=16"]


def check(name: str, overrides: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """Build model ``name`` (``set_model``: a registered or installed one, or ramer's own) with the
    embedded benchmark's config, ``TINY`` and ``overrides`` (``key=value``), on a few scenes of the
    embedded benchmark, and run ``CHECKS``; returns them, passed, or raises a RamerError at the first
    that fails."""
    from ramer.data.synthetic import generate
    from ramer.models import DataSpec, build_model, set_model

    cfg = build_config(resolve_config("synthetic"), [*TINY, *overrides])
    set_model(cfg, name)
    bundle = generate(cfg.data.synthetic)
    store = bundle.splits["train"]
    said = f"model '{name}'"
    with torch.random.fork_rng(devices=[]):  # the caller's CPU random state stays as it was
        torch.default_generator.manual_seed(0)  # not torch.manual_seed, which seeds CUDA's too, for good
        model = build_model(cfg, DataSpec.from_bundle(bundle))
        if hasattr(model, "prepare"):
            model.prepare(store)
        batches = list(patterns(store.collate(np.arange(len(store)))))
        _patterns(model, batches, said)
        _masked(model, batches, said)
        _batch(model, store, said)
        _labels(model, batches, said)
    return CHECKS


def patterns(base: Batch) -> Iterator[tuple[str, Batch]]:
    """``base`` under the missing patterns every model must take (this module's docstring)."""
    yield "as generated", base
    present = dict(base.present)
    yield "no visual", base.with_present({**present, "visual": torch.zeros_like(present["visual"])})
    off = {m: torch.zeros_like(present[m]) for m in ("text", "audio")}
    yield "nobody speaking", base.with_present({**present, **off})
    yield (
        "text only",
        base.with_present({m: present[m] if m == "text" else torch.zeros_like(present[m]) for m in MODALITIES}),
    )
    empty = {m: present[m].clone() for m in MODALITIES}
    for m in MODALITIES:
        empty[m][0] &= ~base.scope[0]
    yield "nothing present in a scope", base.with_present(empty)
    at_target = torch.arange(base.valid.shape[1]).unsqueeze(0) == base.target.unsqueeze(1)  # (B, N)
    yield "target token absent", base.with_present({m: present[m] & ~at_target for m in MODALITIES})
    whole = torch.full_like(base.target, -1)
    yield (
        "whole-scene samples",
        dataclasses.replace(base, target=whole, scope=base.valid.clone(), role=torch.full_like(base.role, ROLE_NONE)),
    )


def with_garbage(batch: Batch, fill: float) -> Batch:
    """``batch`` with ``fill`` (NaN) or noise of that scale under every False presence bit, padding
    included: what a model must never read."""
    feats = {}
    for m in MODALITIES:
        x = batch.features[m]
        noise = torch.full_like(x, fill) if np.isnan(fill) else torch.randn_like(x) * fill
        feats[m] = torch.where(batch.present[m].unsqueeze(-1), x, noise)
    return dataclasses.replace(batch, features=feats)


def _fail(said: str, check: str, pattern: str, what: str) -> RamerError:
    return RamerError(f"{said}: check '{check}' ({pattern}): {what} (docs/ARCHITECTURE.md, 'Adding a model')")


def _patterns(model, batches, said: str) -> None:
    from ramer.models.base import checked_loss

    model.train()
    for pattern, batch in batches:
        out = model(batch)
        probs = _probs(model, out, batch, said, "patterns", pattern)
        if not (torch.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()):
            raise _fail(said, "patterns", pattern, "training-mode probs are not all finite numbers in [0, 1]")
        try:
            loss = checked_loss(model, model.loss(out, batch))
        except RamerError as e:
            raise _fail(said, "patterns", pattern, str(e)) from None
        if not torch.isfinite(loss.total):
            raise _fail(said, "patterns", pattern, f"the loss is {float(loss.total)}")
        model.zero_grad()
        loss.total.backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise _fail(said, "patterns", pattern, f"gradients not finite in {', '.join(bad[:3])}")
    model.zero_grad()
    model.eval()
    for pattern, batch in batches:
        if not torch.isfinite(_scores(model, batch, said, "patterns", pattern)).all():
            raise _fail(said, "patterns", pattern, "eval-mode probs are not finite")


def _probs(model, out, batch: Batch, said: str, check: str, pattern: str) -> torch.Tensor:
    """``out``'s probs, held to the contract scoring holds them to (``base.output_probs``: a
    ``(B, C)`` tensor; ``base.unit_scores``: in [0, 1]), a breach said as this check's."""
    from ramer.models.base import output_probs, unit_scores

    try:
        probs = output_probs(model, out, batch.size, len(batch.label_names))
        unit_scores(model, probs.detach().float().cpu().numpy())
    except RamerError as e:
        raise _fail(said, check, pattern, str(e)) from None
    return probs


def _scores(model, batch: Batch, said: str, check: str, pattern: str) -> torch.Tensor:
    with torch.no_grad():
        return _probs(model, model(batch), batch, said, check, pattern)


def _masked(model, batches, said: str) -> None:
    model.eval()
    for pattern, batch in batches:
        ref = _scores(model, batch, said, "masked", pattern)
        for fill in (1e4, float("nan")):
            if not torch.equal(_scores(model, with_garbage(batch, fill), said, "masked", pattern), ref):
                raise _fail(
                    said,
                    "masked",
                    pattern,
                    f"{fill:g} under a False presence mask changes the scores: a missing "
                    "modality's features must not be read",
                )


def _batch(model, store, said: str) -> None:
    model.eval()
    full = _scores(model, store.collate(np.arange(len(store))), said, "batch", "the whole split")
    part = _scores(model, store.collate([2, 5]), said, "batch", "samples 2 and 5 alone")
    if not torch.allclose(part, full[[2, 5]], rtol=1e-5, atol=1e-5):
        raise _fail(
            said, "batch", "samples 2 and 5 alone", "a sample's scores change with the other samples of its batch"
        )


def _labels(model, batches, said: str) -> None:
    model.eval()
    for pattern, batch in batches:
        flipped = dataclasses.replace(batch, labels=1 - batch.labels)
        if not torch.equal(
            _scores(model, flipped, said, "labels", pattern), _scores(model, batch, said, "labels", pattern)
        ):
            raise _fail(
                said,
                "labels",
                pattern,
                "eval-mode scores change with batch.labels, which scoring gives zeroed: "
                "read them in loss (and in training) only",
            )
