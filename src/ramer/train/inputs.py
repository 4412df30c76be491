"""What the data lets a run not do, said before and while it trains: inputs one of this package's
deep models cannot read (features far below unit scale, one or two values per token, a personality
far from unit scale: ``input_notes``), and why a loss, a gradient or the weights that are not
finite stopped a run (``loss_not_finite``, ``weights_not_finite``, ``kept_note``). The recipe prints
them; nothing here changes a result."""

from __future__ import annotations

import numpy as np
from torch import nn

from ramer.batch import MODALITIES, OVERFLOW, largest_features, magnitudes
from ramer.console import labels_phrase
from ramer.models import CLASSICAL, DataSpec, meta_model
from ramer.models.parts.encoders import modality_encoders

LAYER_NORM_EPS = 1e-5  # torch's default: the epsilon of the input LayerNorm of each of this package's deep models
SCALE_ROWS = 2048  # present rows of the training split read per input for ``input_notes``
QUIET_FACTOR = 0.01  # an input LayerNorm scaling a token's values to under this of unit size: read as constant
LOUD_PERSONALITY = 10.0  # w_pers x the mean square of the personality values: L_pers far above L_cls (~0.7)


def _present_rows(values: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The first ``SCALE_ROWS`` rows of ``values`` where ``keep`` is True, as float64."""
    return np.asarray(values[np.flatnonzero(np.asarray(keep))[:SCALE_ROWS]], dtype=np.float64)


def input_notes(store, model: nn.Module, loss_cfg, source: str) -> list[str]:
    """What one of this package's deep models cannot read in the training split ``store``, as notes
    naming ``source``; none for ordinary data and for models of other packages. Each model reads a
    token's features (and RAMer a person's personality) through a LayerNorm over its values, which
    maps one value to a constant, two values to their order (+1, -1 or -1, +1), and shrinks values
    that vary by far less than ``sqrt(eps)`` within a token to nearly nothing: the model trains as on
    zeros, without a word. RAMer also learns to predict the personality by MSE: values far from unit
    scale make that term outweigh the emotions."""
    if not type(model).__module__.startswith("ramer.models"):
        return []
    inputs = [(m, np.asarray(store.first_present_rows(m, SCALE_ROWS), dtype=np.float64), "token") for m in MODALITIES]
    if getattr(model, "personality", None) is not None and store.personality is not None:
        inputs.append(("personality", _present_rows(store.personality, store.personality_present), "person"))
    notes = []
    for name, rows, unit in inputs:
        if not len(rows):
            continue
        spread = rows.std(1)
        factor = float(np.median(spread / np.sqrt(spread**2 + LAYER_NORM_EPS)))
        if rows.shape[1] == 1 or factor == 0:
            what = "have one value per" if rows.shape[1] == 1 else "repeat one value (zeros, a constant) across each"
            notes.append(
                f"{source}: the {name} features {what} {unit}; the model's input LayerNorm maps them all to the same "
                f"number, so it reads only whether {name} is there, not its value"
                + ("" if name == "personality" else " (br, cc and lp read the value)")
            )
        elif rows.shape[1] == 2 and factor >= QUIET_FACTOR:
            notes.append(
                f"{source}: the {name} features have two values per {unit}; the model's input LayerNorm maps each "
                f"{unit} to (+1, -1) or (-1, +1), so it reads only which of the two is larger and whether {name} "
                "is there, not the values" + ("" if name == "personality" else " (br, cc and lp read the values)")
            )
        elif factor < QUIET_FACTOR:
            notes.append(
                f"{source}: the {name} features vary little within a {unit} (median standard deviation of its "
                f"{rows.shape[1]} values {float(np.median(spread)):.2g}); the model's input LayerNorm (epsilon "
                f"{LAYER_NORM_EPS:g}) shrinks them to about {factor:.1g} of unit size, so it trains as on zeros: "
                f"standardise each {'trait' if name == 'personality' else 'feature column'} (mean 0, standard "
                f"deviation 1)" + ("" if name == "personality" else ", or use br, cc or lp")
            )
        if name == "personality" and getattr(model, "personality_head", None) is not None:
            start = loss_cfg.w_pers * float((rows**2).mean())
            if start > LOUD_PERSONALITY:
                notes.append(
                    f"{source}: the personality values are far from unit scale (root mean square "
                    f"{float(np.sqrt((rows**2).mean())):.3g}); the personality head learns them by squared error, "
                    f"a term of about {start:.3g} at the start (loss.w_pers {loss_cfg.w_pers:g}), far above the "
                    "emotion terms (about 0.7 each), which it outweighs in the loss and in the shared encoders: "
                    "standardise each trait (z-scores over the persons), or lower loss.w_pers"
                )
    return notes


def valid_note(bundle, single_label: bool) -> str | None:
    """Multi-label validation without a single positive label scores every epoch and threshold 0,
    so nothing is chosen there: a note naming ``bundle``'s source, or ``None``."""
    valid = bundle.splits.get("valid")  # missing or empty: the run's check_splits says so, in one line
    if single_label or valid is None or len(valid) == 0 or np.asarray(valid.labels).any():
        return None
    return (
        f"{bundle.source}: no sample of the valid split has a label, so validation micro-F1 is 0 at every epoch "
        "and threshold and nothing is chosen there: the run keeps its first epoch and the threshold 0.5; "
        "give valid labelled samples"
    )


def untrained_note(bundle) -> str | None:
    """Labels that no sample of the train split has (a label only in valid or test): the run cannot
    learn them, and whatever it scores there is not learnt. A note naming ``bundle``'s source and
    each label's counts in valid and test (the first 5), or ``None``."""
    train = bundle.splits.get("train")
    if train is None or len(train) == 0:  # the run's check_splits says so, in one line
        return None
    counts = {s: np.asarray(st.labels).sum(axis=0) for s, st in bundle.splits.items() if len(st)}
    missing = [j for j in range(len(bundle.label_names)) if counts["train"][j] == 0]
    if not missing:
        return None

    def where(j: int) -> str:  # its counts in the other splits, where there are any
        other = ", ".join(f"{s} {int(c[j])}" for s, c in counts.items() if s != "train")
        return f" ({other})" if other else ""

    what, it = labels_phrase([f"{bundle.label_names[j]!r}{where(j)}" for j in missing])
    return f"{bundle.source}: {what} no sample in the train split: the run cannot learn {it}"


def unseen_modality_notes(bundle) -> list[str]:
    """Modalities present at no token of the train split but at some of another split's (no face in
    any training scene, a test split with video): the run cannot learn them, yet its model reads
    them there with weights (a deep model's encoder) that never trained. A note per modality naming
    ``bundle``'s source and its share of each other split's tokens."""
    train = bundle.splits.get("train")
    if train is None or len(train) == 0:  # the run's check_splits says so, in one line
        return []
    shares = {s: np.asarray(st.present).mean(0) for s, st in bundle.splits.items() if len(st.present)}
    notes = []
    for k, m in enumerate(MODALITIES):
        if shares["train"][k] > 0 or not any(share[k] > 0 for share in shares.values()):
            continue
        said = ", ".join(f"{s} {_percent(share[k])}" for s, share in shares.items() if s != "train")
        notes.append(
            f"{bundle.source}: {m} is present at no token of the train split ({said} of tokens): the run cannot "
            f"learn it, and its model scores {m} there with weights that never trained"
        )
    return notes


def _percent(share: float) -> str:
    """``share`` (0..1) as a percentage: ``31 %``, ``0.42 %``."""
    p = 100 * share
    return f"{p:.0f} %" if p >= 1 or p == 0 else f"{p:.2g} %"


def recompute_note(model: nn.Module, cfg) -> str | None:
    """Where ``train.recompute`` is asked of a model without RAMer's modality encoders, which alone
    run their layers again in backward: it trains as without it."""
    if not cfg.train.recompute or modality_encoders(model):
        return None
    return (
        f"train.recompute has no effect on model '{cfg.model.name}': it runs again only the layers of RAMer's "
        "modality encoders, which this model does not have"
    )


def ablations_note(cfg) -> str | None:
    """Where ``model.ablations`` is set for a model other than RAMer, whose parts alone they switch
    off: it trains as without them (``ramer-authors`` refuses them when it is built)."""
    if not cfg.model.ablations or cfg.model.name == "ramer":
        return None
    return (
        f"model.ablations has no effect on model '{cfg.model.name}': they switch parts of RAMer off "
        "(ramer train --model ramer-<ablation>)"
    )


def threshold_note(cfg, single_label: bool) -> str | None:
    """Where ``train.per_label_threshold`` is set on single-label data, whose decision is the arg-max
    (nothing tuned): it trains and decides as without it."""
    if not cfg.train.per_label_threshold or not single_label:
        return None
    return (
        "train.per_label_threshold has no effect on single-label data: the arg-max decides, no threshold is "
        "tuned (data.task=multi_label for per-label sigmoids and thresholds)"
    )


def model_notes(store, model: nn.Module, cfg, source: str) -> list[str]:
    """What a deep ``model`` cannot read in the training split ``store`` (``input_notes``) and what
    of its config does not reach it (``recompute_note``)."""
    return [*input_notes(store, model, cfg.loss, source), *filter(None, [recompute_note(model, cfg)])]


def bench_notes(bundle, configs, task: str) -> list[str]:
    """The notes of ``valid_note``, ``untrained_note``, ``unseen_modality_notes``, ``ablations_note``,
    ``threshold_note`` and ``model_notes`` for the runs of a bench or a search, once: their runs train
    with a quiet console. ``configs``: one ``Config`` per model (classical ones too); ``task``: the
    data's (``resolve_task``). Each model is built on the meta device (no memory taken) only to read
    what it is."""
    notes = [n for n in (valid_note(bundle, task == "single_label"), untrained_note(bundle)) if n]
    notes += unseen_modality_notes(bundle)
    if "train" not in bundle.splits:  # the runs' check_splits says so, in one line
        return notes
    spec = DataSpec.from_bundle(bundle, task)
    for cfg in configs:
        for note in (ablations_note(cfg), threshold_note(cfg, spec.single_label)):
            if note and note not in notes:
                notes.append(note)
        if cfg.model.name in CLASSICAL:
            continue
        try:
            model = meta_model(cfg, spec)
        except Exception:  # a model that does not build says so when its run starts
            continue
        notes += [n for n in model_notes(bundle.splits["train"], model, cfg, bundle.source) if n not in notes]
    return notes


def loss_not_finite(epoch: int, step: int, value, batch, what: str = "loss") -> str:
    """Why training stopped on a loss (or, ``what``, its gradient) that is not finite. At the first
    step of a run no update has been made, so the learning rate had no part in it: the message gives
    the batch's largest feature magnitudes instead, and the remedy where one reaches ``OVERFLOW``."""
    said = f"epoch {epoch} step {step}: {what} is not finite ({value})"
    if epoch > 1 or step > 0:
        return said + "; lower train.lr?"
    largest = largest_features(batch)
    sizes = magnitudes(largest)
    if max(largest.values()) < OVERFLOW:
        return f"{said} at the first step, before any update, so not for train.lr (largest feature magnitudes: {sizes})"
    return (
        f"{said} at the first step, before any update, so not for train.lr: the model's arithmetic overflowed on "
        f"this batch, whose largest feature magnitudes are {sizes}; rescale the features (e.g. standardise each "
        "column), or use br, cc or lp"
    )


def weights_not_finite(epoch: int, bad: list[str]) -> str:
    """Why training stopped on weights that are not finite after an epoch's last step (whose loss and
    gradient were finite: an update overflowed); ``bad``: the names of the parameters."""
    more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return (
        f"epoch {epoch}: the weights are not finite after its last step ({bad[0]}{more}), though every loss and "
        "gradient was: an update overflowed; lower train.lr?"
    )


def kept_note(out, epochs_done: int, best_epoch: int) -> str:
    """What a run that stopped on a value not finite after ``epochs_done`` saved epochs keeps, and
    why ``--resume`` does not help: it repeats the same steps with the same settings."""
    if epochs_done < 1:
        return ""
    kept = "epoch 1" if epochs_done == 1 else f"epochs 1 to {epochs_done}"
    return (
        f"; {out} keeps {kept} (the best, epoch {best_epoch}, in model.safetensors), but "
        "--resume repeats its steps with the same settings: train anew in another --out"
    )
