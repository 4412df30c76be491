"""Python API for trained runs: ``ramer.load(RUN_DIR).predict(data)``."""

from __future__ import annotations

import json
import numbers
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ramer import checkpoint as ckpt
from ramer.batch import OVERFLOW, Batch, largest_features, magnitudes
from ramer.config import Config
from ramer.console import names_line
from ramer.data import DataBundle, SceneStore, load_bundle
from ramer.data.store import largest_store_features
from ramer.errors import RamerError, ScoresNotFinite, first_of
from ramer.infer import (
    autocast,
    batch_scores,
    check_precision,
    model_dtype,
    not_bf16_safe,
    resolve_device,
    to_inference_precision,
)
from ramer.infer import predict as predict_store
from ramer.metrics import ARGMAX, decide, finite_scores
from ramer.models import CLASSICAL, DataSpec, UnknownModel, build_model, meta_model
from ramer.models.base import import_settings, trait_names
from ramer.paths import argument, held_elsewhere, shell_quote

__all__ = ["OtherImport", "Predictor", "RunNotFinished", "load", "load_data_for"]

_BUILDING = threading.Lock()  # one real build at a time (``_built``'s second way): each puts back the random state


def _import_traits(info) -> tuple[tuple[str, ...], str] | None:
    """An import's trait names (``models.base.trait_names``) and `` of FILE`` naming its personality
    file (``info.source_files``' second), or None for data of another source."""
    if (traits := trait_names(info)) is None:
        return None
    files = info.get("source_files") or []
    of = f" of {Path(files[1]).name}" if len(files) > 1 and isinstance(files[1], str) else ""
    return traits, of


class OtherImport(UserWarning):
    """``load_data_for`` of data imported otherwise than the run's own (``Predictor.data_notes``):
    it is scored all the same; the CLI prints it as a note."""


class RunNotFinished(UserWarning):
    """``load`` of a run that has not finished: its best model so far (the CLI prints it as a note)."""


@dataclass
class Predictor:
    """A trained model with its config, data spec and decision threshold (``"argmax"`` for
    single-label data: each sample gets its top label)."""

    model: nn.Module
    cfg: Config
    spec: DataSpec
    threshold: float | np.ndarray | str
    device: torch.device
    epoch: int
    data_fingerprints: dict[str, str] = field(default_factory=dict)  # of the data the run was made on
    # the versions that wrote the model file (ramer_version, torch_version); empty for a file from before
    # they were recorded
    written_by: dict[str, str] = field(default_factory=dict)

    @property
    def label_names(self) -> tuple[str, ...]:
        """The model's labels, in the order of the columns of ``predict`` and ``decide``."""
        return self.spec.label_names

    def __repr__(self) -> str:
        """One line (a notebook's echo; the module, config and spec are its attributes)."""
        threshold = self.threshold
        if isinstance(threshold, np.ndarray):
            threshold = f"per label {np.round(threshold, 3).tolist()}"
        elif isinstance(threshold, float):
            threshold = f"{threshold:.4g}"
        dtype = model_dtype(self.model)  # load(precision="bf16") casts the weights; precision is the run's
        weights = "" if dtype == torch.float32 else f", weights {str(dtype).removeprefix('torch.')}"
        return (
            f"Predictor(model {self.cfg.model.name!r} ({type(self.model).__name__}), epoch {self.epoch}, "
            f"labels {names_line(self.label_names)}, threshold {threshold}, device {self.device}, "
            f"precision {self.precision}{weights})"
        )

    @property
    def precision(self) -> str:
        """How the run scored its validation and test split: under bfloat16 autocast for a deep run
        trained with ``train.precision: bf16``, else fp32 (``infer.predict`` takes no autocast for a
        model cast whole to bfloat16, ``load(precision="bf16")``)."""
        return "fp32" if self.cfg.model.name in CLASSICAL else self.cfg.train.precision

    def check_data(self, names, dims: dict[str, int | None], source: str, labels=None, info=None) -> None:
        """The data's labels and feature sizes must be the model's (a personality size only where
        both have personality: a model without it ignores it, one with it does without); a
        RamerError naming ``source`` if not. ``predict`` checks so, and the CLI before it scores
        (``cli.score_split``) and before ``eval``'s own checks, with ``labels`` and ``info``.
        ``labels``: the data's label rows ``(n, C)``, where known: with them the error tells data whose
        samples carry only labels of the model (an import to make again with the model's ``--labels``)
        from data with a label the model lacks. ``info``: the data's ``DataBundle.info``, where known: an
        import's trait names, said (with the model's, where its own data records them) when the
        personality width is not the model's."""
        if tuple(names) != tuple(self.spec.label_names):
            model = list(self.spec.label_names)
            said = f"{source}: labels {list(names)} differ from the model's {model}"
            again = f"(an import: --labels {shell_quote(','.join(model))})"
            lacks = [n for n in names if n not in model]
            carried = None if labels is None else np.asarray(labels).reshape(-1, len(names)).any(axis=0)
            if sorted(names) == sorted(model):  # an import whose --labels (or sorted names) put them otherwise
                said += f": the same labels in another order; give them in the model's {again}"
            elif not lacks:  # fewer: the model's columns, zero where the data has none, are the same annotations
                said += f"; the model's labels include all of these: give the model's labels, in its order {again}"
            elif carried is not None and not any(c for n, c in zip(names, carried) if n in lacks):
                said += (
                    f"; no sample here carries {', '.join(map(repr, lacks))}, which the model lacks: give the "
                    f"model's labels, in its order {again}"
                )
            elif carried is not None:  # no re-import helps: the model cannot score what it never learnt
                held = [f"{n!r}" for n, c in zip(names, carried) if c and n in lacks]
                said += (
                    f"; the model has no label {', '.join(held)}, which samples here carry: score them with a run "
                    "trained on these labels"
                )
            raise RamerError(said)
        expected = {**self.spec.dims, "personality": self.spec.personality_dim}
        for key, size in dims.items():
            if size is not None and expected.get(key) is not None and size != expected[key]:
                said = f"{source}: {key} features have size {size}, the model expects {expected[key]}"
                traits = _import_traits(info) if key == "personality" else None
                if traits is not None:  # an import's --personality file: say what to import it with
                    names_of, of = traits
                    said = f"{source}: personality features have size {size} (the traits {', '.join(names_of)}{of})"
                    if (own := self._own_traits()) is not None:
                        said += (
                            f", the model expects {expected[key]} ({', '.join(own)}, as {self.cfg.data.path} was "
                            f"imported with): import the table again with --personality naming a file of these "
                            f"{expected[key]} traits, in this order, or without --personality"
                        )
                    else:
                        said += (
                            f", the model expects {expected[key]}: import the table again with --personality naming a "
                            f"file of the {expected[key]} traits the model was trained with, in their order, or "
                            "without --personality"
                        )
                raise RamerError(said)
        traits = _import_traits(info) if dims.get("personality") is not None else None
        if traits is not None and (own := self._own_traits()) is not None and traits[0] != own:
            raise RamerError(  # the same width, other columns: each trait read as another, without a word
                f"{source}: personality traits {', '.join(traits[0])}{traits[1]} are not the model's "
                f"{', '.join(own)}, in this order: import the table again with --personality naming a file of "
                "these traits, in this order, or without --personality"
            )

    def data_notes(self, bundle: DataBundle, source: str | None = None) -> list[str]:
        """Where ``bundle``, data the model takes (``check_data``), was imported otherwise than the
        run's own (``DataSpec.import_settings``): another ``--context``, or features of a modality
        both have made by another model or version. It is scored all the same, on inputs unlike those
        the model learnt from: a note each, naming ``source`` (default the bundle's). Empty where either
        side is not an import."""
        source = bundle.source if source is None else source
        ours, theirs = self.spec.import_settings, import_settings(bundle.info, bundle.modalities)
        if ours is None or theirs is None:
            return []
        notes = []
        if theirs["context"] != ours["context"]:
            notes.append(
                f"{source}: imported with --context {theirs['context']}, the run's data with --context "
                f"{ours['context']}: its scenes hold other neighbours than the model learnt from (import it with "
                f"--context {ours['context']} for the same)"
            )
        for m, made in theirs["features"].items():
            if m in ours["features"] and made != ours["features"][m]:
                notes.append(
                    f"{source}: its {m} features are '{made}', the run's data's '{ours['features'][m]}': the model "
                    "scores features unlike those it learnt from"
                )
        return notes

    def _own_traits(self) -> tuple[str, ...] | None:
        """The trait names of the run's data, in column order (an import's ``--personality`` columns):
        as its model file records them, or, for a file written before it did, as the run's own data
        records them, where it is still there, is an import and has the model's personality width;
        else None."""
        if self.spec.personality_dim is None:  # the model reads no personality: no traits to compare
            return None
        if self.spec.personality_names is not None or self.cfg.data.path is None:
            return self.spec.personality_names
        try:
            meta = json.loads((Path(self.cfg.data.path).expanduser() / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return trait_names(meta.get("info") if isinstance(meta, dict) else None, self.spec.personality_dim)

    def predict(
        self,
        data: SceneStore | DataBundle | Batch,
        split: str | None = None,
        workers: int = 1,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Probabilities ``(n, C)`` for a split store, a bundle's ``split`` (default ``"test"``), or one
        batch; ``split`` is for a bundle only. ``batch_size``: scenes scored at once (a store or
        bundle, not a batch; default the run's ``train.eval_batch_size``): lower it where long scenes
        do not fit in memory; the scores change only by float rounding.

        ``workers`` (CPU, a store or bundle): score in that many forked processes of one thread
        each; can be faster than one process with several threads. Linux only
        (``infer.check_fork``: no fork on Windows, none safe on macOS).

        A batch must be one ``SceneStore.collate`` builds (``Batch.check``: fields, shapes, index
        ranges; a RamerError names the first field that is not). Features must be finite where their
        presence bit is True: a batch is checked before it is scored; a store or bundle whose scores
        come out NaN is scanned, and the error names the data and the modality (not the model) when
        its features are the cause.

        Threads may call it at once (a web server's): each gets the scores of a call alone, and
        threads, grad mode, autocast and dtype are left as they were."""
        for name, n in (("workers", workers), ("batch_size", 1 if batch_size is None else batch_size)):
            if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
                raise RamerError(f"{name} must be an integer of at least 1, got {n!r}")
        workers = int(workers)  # numpy's integers too
        if not isinstance(data, (SceneStore, DataBundle, Batch)):
            raise RamerError(
                f"predict takes a SceneStore, a DataBundle or a Batch, not {type(data).__name__} "
                "(load one with ramer.data.load_dataset(PATH), or the run's own with "
                "ramer.api.load_data_for(predictor))"
            )
        if split is not None and not isinstance(split, str):
            raise RamerError(f"split is a split's name (a str such as 'test'), not {type(split).__name__}")
        if split is not None and not isinstance(data, DataBundle):
            raise RamerError(
                f"split={split!r} picks a split of a DataBundle; a {type(data).__name__} is one split already "
                "(leave split out, or pass the bundle)"
            )
        if workers != 1 and isinstance(data, Batch):
            raise RamerError(
                f"workers={workers} shares the batches of a SceneStore or DataBundle out among processes; "
                "a Batch is scored in one pass in this process (leave workers out)"
            )
        if batch_size is not None and isinstance(data, Batch):
            raise RamerError(
                f"batch_size={batch_size} cuts a SceneStore or DataBundle into batches; a Batch is scored in one "
                "pass (leave batch_size out, or pass fewer samples: batch.select(rows))"
            )
        where, info = None, None
        if isinstance(data, DataBundle):
            split = "test" if split is None else split
            if split not in data.splits:
                raise RamerError(f"{data.source}: no split '{split}' (has {', '.join(data.splits)})")
            info, data, where = data.info, data.splits[split], f"{data.source}: split '{split}'"
        if isinstance(data, Batch):
            data.check("batch")
            self.check_data(data.label_names, data.dims, "batch", data.labels.cpu())
            _refuse_nonfinite_batch(data)
            was_training = self.model.training  # a model put in training mode stays so (as ``infer.predict``)
            self.model.eval()
            try:
                dtype = model_dtype(self.model)
                cast = self.precision if dtype == torch.float32 else "fp32"  # a model cast whole: no autocast
                with torch.inference_mode(), autocast(self.device, cast):
                    scores = batch_scores(self.model, data.to(self.device, dtype))
            except (RuntimeError, ValueError) as e:  # as infer.predict says it for a store
                if (said := not_bf16_safe(self.model, e)) is None:
                    raise
                raise said from None
            finally:
                self.model.train(was_training)
            try:  # the inputs are finite: NaN scores are the model's (as ``infer.predict`` says)
                finite_scores(scores)
            except ScoresNotFinite as e:
                raise _overflowed(largest_features(data), "batch") or ScoresNotFinite(
                    f"model {type(self.model).__name__}: {e}"
                ) from None
            return scores
        self.check_data(data.label_names, data.dims, data.source, data.labels, info)
        try:
            batch_size = self.cfg.train.eval_batch_size if batch_size is None else int(batch_size)
            return predict_store(self.model, data, batch_size, self.device, self.precision, workers=workers).scores
        except RamerError as e:  # NaN scores: the data's fault? (scanned only now: a good store is read once)
            data.check(where)  # names the data and the array when it is
            if isinstance(e, ScoresNotFinite):
                if (said := _overflowed(largest_store_features(data), where or data.source)) is not None:
                    raise said from None
            raise

    def decide(self, probs: np.ndarray) -> np.ndarray:
        """0/1 predictions ``(n, C)`` with the stored decision (``metrics.decide``): ``probs > threshold``,
        or for single-label data exactly one label per sample, its highest-scoring one; ``probs`` (n, C),
        finite and in [0, 1] (probabilities, as ``predict`` returns them, not logits)."""
        if isinstance(probs, torch.Tensor):  # numpy has no bfloat16; a tensor on a GPU is copied back
            probs = probs.detach().float().cpu()
        try:
            probs = np.asarray(probs)
        except ValueError as e:  # rows of unequal length
            raise RamerError(f"probabilities are not an (n, {len(self.label_names)}) array: {e}") from None
        if probs.ndim != 2 or probs.shape[1] != len(self.label_names):
            raise RamerError(
                f"probabilities of shape {probs.shape}, expected (n, {len(self.label_names)}) "
                f"for the labels {list(self.label_names)}"
            )
        if probs.dtype.kind not in "biuf":
            raise RamerError(f"probabilities of dtype {probs.dtype}, expected numbers in [0, 1]")
        if bad := int((~np.isfinite(probs)).sum()):
            raise RamerError(f"probabilities: {bad} of {probs.size} are NaN or infinite; expected numbers in [0, 1]")
        if (outside := (probs < 0) | (probs > 1)).any():
            raise RamerError(
                f"probabilities: {int(outside.sum())} of {probs.size} lie outside [0, 1] (e.g. "
                f"{float(probs[outside][0]):.4g}); decide takes probabilities as predict returns them, not logits"
            )
        return decide(probs, self.threshold)


def _overflowed(largest: dict[str, float], where: str) -> ScoresNotFinite | None:
    """Where scores came out NaN from finite features that reach ``OVERFLOW``: the error that names
    them, not the model (a float32 model overflows on them, trained or not)."""
    if max(largest.values(), default=0.0) < OVERFLOW:
        return None
    return ScoresNotFinite(
        f"{where}: scores are NaN or infinite: the model's arithmetic overflowed on features whose largest "
        f"magnitudes are {magnitudes(largest)}; rescale the features as the run's training data were (e.g. "
        "standardise each column)"
    )


def _refuse_nonfinite_batch(batch: Batch) -> None:
    """A RamerError naming the modality and the first sample when a batch holds NaN or inf in a present
    token (or person, for personality). A sum per feature tensor (NaN or inf when any value is, or when
    finite ones overflow) is the cheap test; the masked count runs only when a sum is not finite."""
    feats, masks = dict(batch.features), dict(batch.present)
    if batch.personality is not None:
        feats["personality"] = batch.personality
        masks["personality"] = batch.personality_present
    for name, x in feats.items():
        if bool(torch.isfinite(x.sum())):
            continue
        finite = torch.isfinite(x)
        mask = masks.get(name)
        bad = ~finite if mask is None else ~finite & mask.unsqueeze(-1).to(finite.device)  # (B, N, d)
        if count := int(bad.sum()):
            first = int(bad.flatten(1).any(1).nonzero()[0])
            raise RamerError(
                f"batch: {count} non-finite values (NaN or inf) in present {name} features (first in sample "
                f"'{batch.ids[first]}'); features must be finite numbers (write 0 for a missing value)"
            )


def load(run_dir: str | os.PathLike, device: str | torch.device | None = None, precision: str = "fp32") -> Predictor:
    """Load the best checkpoint of a run directory (or a ``model.safetensors`` file).

    ``precision="bf16"`` casts a deep model to bfloat16 for faster inference on CPUs with bf16
    support (AVX-512 BF16, AMX) and on GPUs; scores then differ from fp32 by a few thousandths, which
    flips some decisions near the threshold (0.12 % of them on a trained run of the embedded benchmark,
    0.6-2.4 % with random weights, docs/PERFORMANCE.md).
    ``device``: where to run (``cpu``, ``cuda``, ``cuda:N``, or a ``torch.device``); default: the
    run's ``train.device``.

    A run that has not finished (no ``test_metrics.json`` beside its training state: still being
    trained, or stopped) gives its best model so far, with a ``RunNotFinished`` warning (a
    ``UserWarning``) saying so. Loading draws nothing from the global random generator, which
    another thread may be drawing from (``_built``), and the weights are float32, as trained,
    whatever torch's default dtype."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise RamerError(
            f"ramer.load takes the path of a run folder or its model.safetensors (a str or Path), "
            f"not {type(run_dir).__name__}"
        )
    if isinstance(device, torch.device):
        device = str(device)
    if device is not None and not isinstance(device, str):
        raise RamerError(f"device must be a str such as 'cpu' or 'cuda:0' (or a torch.device), not {device!r}")
    check_precision(precision)  # before the checkpoint is read and a classical model refuses bf16
    path = Path(run_dir).expanduser()
    if not path.exists():
        raise RamerError(f"{path}: run folder not found (a run folder, or its model.safetensors)")
    model_file = _model_file(path)
    state, cfg, spec, threshold, epoch = ckpt.read_model_file(model_file)
    written = ckpt.read_written_by(model_file)
    if device is not None:
        cfg.train.device = device
    if cfg.model.name in CLASSICAL:
        from ramer.models.classical import ClassicalModule

        try:
            model = ClassicalModule.from_state(cfg.model.name, spec, state)
        except RamerError as e:
            raise RamerError(f"{model_file}: {e}") from None
    else:
        try:
            model = _built(cfg, spec, state, str(model_file), written.get("ramer_version"))
        except UnknownModel as e:  # a model of another package, not (or no longer) installed here
            hint = "registered in Python? register it in this process first, or install it: docs/ARCHITECTURE.md"
            raise RamerError(f"{model_file}: {e} ({hint})") from None
    asked = "the device asked for (device=, or --device)" if device is not None else "the run's train.device"
    dev = resolve_device(cfg.train.device, "load it with device='cpu' (ramer eval / predict --device cpu)", asked)
    if precision != "fp32" and cfg.model.name in CLASSICAL:
        raise RamerError(f"{model_file}: precision {precision} applies to the deep models, not '{cfg.model.name}'")
    model = to_inference_precision(model.to(dev), precision).eval()
    fingerprints = ckpt.read_data_fingerprints(model_file)
    run = model_file.parent
    if (run / "train_state.pt").exists() and not (run / "test_metrics.json").exists():
        warnings.warn(
            f"{run}: the run has not finished (no test_metrics.json): still being trained, or stopped before its "
            f"test; this is its best model so far (epoch {epoch}); ramer train --resume {shell_quote(argument(run))} "
            "finishes a stopped run",
            RunNotFinished,
            stacklevel=2,
        )
    return Predictor(model, cfg, spec, _decision(threshold), dev, epoch, fingerprints, written)


def _built(cfg: Config, spec: DataSpec, state: dict[str, torch.Tensor], source: str, written: str | None) -> nn.Module:
    """The deep model of ``cfg`` holding the weights ``state``, of the types the file holds them in
    (float32 as ramer trains them, whatever torch's default dtype).

    Built on the meta device (``meta_model``: no initial weights drawn), then given the tensors of
    ``state`` themselves (``load_state_dict(assign=True)``). Nothing is drawn from the global random
    generator (unless a plugin's builder seeds it or draws on the CPU on purpose), so nothing needs
    putting back: saving it and putting it back undid what another thread drew meanwhile (its
    random numbers came again). A model holding a tensor that no state holds (a non-persistent
    buffer, a tensor attribute, one in a list or dict, a lazy module), or one that does not build on
    the meta device (a builder that reads a value): a plugin's, is built for real instead, its initial
    weights drawn in a ``fork_rng`` (one such build at a time), then given ``state``'s tensors. A
    RamerError names ``source`` where the weights do not fit."""
    try:
        model = meta_model(cfg, spec)
    except UnknownModel:
        raise
    except Exception:  # a builder that needs real values (a plugin's reads one): built for real below
        model = None
    if model is None or not _all_in_state(model):
        try:
            with _BUILDING, torch.random.fork_rng(devices=[]):
                model = build_model(cfg, spec)
        except RamerError as e:
            raise RamerError(f"{source}: {e}") from None
        lazy = any(nn.parameter.is_lazy(t) for t in model.state_dict(keep_vars=True).values())
        ckpt.load_state_into(model, state, source, written, assign=not lazy)  # a lazy one: sized by the file
        return model
    ckpt.load_state_into(model, state, source, written, assign=True)
    return model


def _all_in_state(model: nn.Module) -> bool:
    """Every tensor of ``model`` (its modules' attributes, in lists, tuples and dicts too) is one of
    its state's, none of which is lazy (``_built``)."""
    own = model.state_dict(keep_vars=True)
    held = {id(t) for t in own.values()}

    def tensors(value, depth: int = 0):
        if isinstance(value, torch.Tensor):
            yield value
        elif depth < 4 and isinstance(value, (list, tuple, set, frozenset, dict)):
            for item in value.values() if isinstance(value, dict) else value:
                yield from tensors(item, depth + 1)

    found = (t for m in model.modules() for t in tensors(vars(m)))
    return all(id(t) in held for t in found) and not any(nn.parameter.is_lazy(t) for t in own.values())


def _model_file(path: Path) -> Path:
    """The ``model.safetensors`` that ``ramer.load``'s existing ``path`` names: the file in a run
    folder, or the file itself. Another file of a run, a dataset folder, a folder of runs (``ramer demo
    --out``) and a run with no model yet are each a RamerError saying which path to give instead."""
    if path.is_file():
        if path.suffix != ".safetensors" and not ckpt.looks_like_safetensors(path):  # run/config.yaml
            run = f"; the run is {path.parent}" if (path.parent / "model.safetensors").is_file() else ""
            raise RamerError(f"{path}: a file, not a run folder (or its model.safetensors){run}")
        return path
    if path.exists() and not path.is_dir():
        raise RamerError(f"{path}: not a file or a folder (a pipe or a device?); give a run folder or its model file")
    model_file = path / "model.safetensors"
    if model_file.exists() or not path.is_dir():
        return model_file  # read_model_file names what is wrong with it
    if (path / "meta.json").is_file():  # a native dataset (data import, synth, convert): the data, not a run
        raise RamerError(
            f"{path}: a dataset folder (it holds meta.json), not a run; give a run folder, and the data with --data"
        )
    runs = sorted(p.name for p in path.iterdir() if (p / "model.safetensors").is_file())
    if runs:
        raise RamerError(
            f"{path}: a folder of runs, not a run (no model.safetensors in it); load one of them: "
            + first_of([str(path / name) for name in runs], 5)
        )
    if (path / "config.yaml").is_file() and (path / "metrics.jsonl").exists():
        raise RamerError(
            f"{path}: the run has no model.safetensors yet (still being trained, or stopped before its first "
            "best model was saved)"
        )
    # a command that holds it and has written nothing yet (a run loading its data): not "not found"
    held = held_elsewhere(path, "no model.safetensors in it yet (a run saves one after its first epoch)")
    if held is not None:
        raise RamerError(held)
    return model_file


def _decision(threshold) -> float | np.ndarray | str:
    """The stored threshold (checked against the model's task by ``read_model_file``) as ``decide`` takes it."""
    if isinstance(threshold, list):
        return np.asarray(threshold, dtype=np.float64)
    return threshold if threshold == ARGMAX else float(threshold)


def load_data_for(
    predictor: Predictor, data: str | os.PathLike | None = None, compare: str | tuple[str, ...] = ("test",)
) -> DataBundle:
    """The dataset a run was trained on (its ``cfg.data``), or another one given by path (a str or
    Path: any layout ``--data`` takes). For the run's own data, the splits named in ``compare`` (one
    name, or several; each one of the data's) are compared with the fingerprints the run recorded of
    the data it was trained on (a hash of each, which reads its arrays once), and a
    ``UserWarning`` says which changed: data regenerated at the same path, or a run trained on a
    bundle made in memory, whose ``cfg.data`` gives other data (pass that bundle to ``predict``)."""
    if not isinstance(predictor, Predictor):
        raise RamerError(
            f"load_data_for takes a Predictor (predictor = ramer.load(RUN_DIR)), not {type(predictor).__name__}"
        )
    compare = (compare,) if isinstance(compare, str) else compare  # "test" was read as 't', 'e', 's', 't'
    if not isinstance(compare, (tuple, list)) or not all(isinstance(n, str) for n in compare):
        raise RamerError(f"load_data_for: compare must be a split name or a tuple of them, not {compare!r}")
    cfg = predictor.cfg.model_copy(deep=True)
    if data is not None:
        if not isinstance(data, (str, os.PathLike)):
            raise RamerError(f"load_data_for: data must be a path (a str or Path), not {type(data).__name__}")
        cfg.data.path = os.fspath(data)
    else:
        check_run_data(
            cfg.data.path,
            "run this from that folder, or give the data with --data PATH (in Python: load_data_for(predictor, "
            "data=PATH))",
        )
    bundle = load_bundle(cfg.data)
    if data is None and (unknown := [n for n in compare if n not in bundle.splits]):
        raise RamerError(
            f"load_data_for: compare names {', '.join(map(repr, unknown))}, not a split of {bundle.source} "
            f"(has {', '.join(bundle.splits)})"
        )
    for note in predictor.data_notes(bundle) if data is not None else ():  # other data, imported otherwise
        warnings.warn(note, OtherImport, stacklevel=2)
    if data is None and (changed := ckpt.changed_splits(predictor.data_fingerprints, bundle, compare)):
        warnings.warn(
            f"split{'s' if len(changed) > 1 else ''} {', '.join(repr(x) for x in changed)} of "
            f"{cfg.data.path or 'the embedded benchmark'} differ{'' if len(changed) > 1 else 's'} from the data "
            "the run was trained on "
            "(regenerated since, or the run was trained on a bundle made in memory: pass that to predict)",
            stacklevel=2,
        )
    return bundle


def check_run_data(path: str | None, remedy: str) -> None:
    """A run's ``data.path`` must be found from here; else a RamerError saying how it was stored
    and ``remedy``."""
    if path is not None and not Path(path).exists():
        raise RamerError(
            f"{path}: data path not found from here (the run's data.path, as given when it was trained: a relative "
            f"path is from the folder it was trained in); {remedy}"
        )
