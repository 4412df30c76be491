"""Search spaces of ``ramer tune``: for each model, the config keys it searches and their ranges.

A space is a tuple of :class:`Param`, each one config key (``train.lr``, ``loss.w_cl``). Every
deep model searches the common space (learning rate, weight decay, hidden size, dropout); a model
that reads ``model.layers`` also searches its text / audio / visual layer counts; a model's own
entry in ``SPACES`` adds the settings of its own mechanisms. Only keys the model reads are
searched (``tests/test_tune.py`` checks that changing each one changes the model's training loss).

Left out, because they are not config keys (the constructor fixes them): the RAMer authors'
private and common dropouts (0.1, 0.3).

``suggest(trial, space)`` draws the values of one trial; ``trial`` is an Optuna trial (only its
``suggest_float`` / ``suggest_int`` / ``suggest_categorical`` are called, so this module does not
import Optuna). The parameter names are the config keys, so a trial's ``params`` are the values
to set (``config.with_values``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ramer.config import Config, with_values
from ramer.errors import RamerError


@dataclass(frozen=True)
class Param:
    """One searched config key: a float range (``log``: log-uniform), an int range, or choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def value(self, cfg: Config) -> Any:
        """This key's value in ``cfg``."""
        node: Any = cfg
        for part in self.key.split("."):  # model.options.NAME.KEY goes into dicts
            if isinstance(node, dict) and part not in node:
                raise RamerError(f"{self.key}: not set in this config")
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return node

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        kind = "int" if self.integer else ("log-uniform" if self.log else "uniform")
        return f"{self.key} {kind} [{self.low:g}, {self.high:g}]"


def log(key: str, low: float, high: float) -> Param:
    return Param(key, low, high, log=True)


# every deep model
COMMON = (
    log("train.lr", 1e-4, 3e-3),
    log("train.weight_decay", 1e-4, 1e-1),
    Param("model.hidden", choices=(32, 64, 128)),
    Param("model.dropout", 0.0, 0.3),
)
# encoder layers per modality (every deep model reads them; MulT one depth, the largest: below).
# From 0: an encoder of its input projection alone is a model the search may find best (late
# fusion's one-block form, the bench's earlier default, is its 0).
LAYERS = (
    Param("model.layers.text", 0, 3, integer=True),
    Param("model.layers.audio", 0, 2, integer=True),
    Param("model.layers.visual", 0, 2, integer=True),
)
# RAMer's loss weights of the parts the paper adds, and the contrastive temperature
RAMER_OWN = (
    log("loss.w_cl", 0.01, 1.0),  # contrastive (SupCon)
    log("loss.w_ae", 0.1, 3.0),  # auto-encoder reconstruction
    log("loss.w_cross", 0.1, 3.0),  # cross-modal reconstruction
    log("loss.w_shuf", 0.1, 3.0),  # stack-shuffle virtual samples
    log("loss.w_adv", 1e-3, 0.1),  # tier-1 adversarial (modality discriminators)
    log("loss.w_radv", 1e-3, 0.1),  # tier-2 adversarial (real / reconstructed)
    log("model.temperature", 0.03, 0.3),
    Param("model.modality_dropout", 0.0, 0.3),
)
# the authors' design has no tier-2 adversary (w_radv) and no modality dropout
AUTHORS_OWN = tuple(p for p in RAMER_OWN if p.key not in ("loss.w_radv", "model.modality_dropout"))

SPACES: dict[str, tuple[Param, ...]] = {
    "ramer": (*COMMON, *LAYERS, *RAMER_OWN),
    "ramer-authors": (*COMMON, *LAYERS, *AUTHORS_OWN),
    "late_fusion": (*COMMON, *LAYERS),
    # ML-GCN: the label graph's threshold tau and re-weighting p (the paper's 0.4 and 0.2 inside)
    "mlgcn": (*COMMON, *LAYERS, Param("model.mlgcn_tau", 0.1, 0.7), Param("model.mlgcn_p", 0.05, 0.5)),
    "hhmpn": (*COMMON, *LAYERS),
    # AMP: the budget of its learned adversarial masking, the weight of the masked pass and the size
    # of the adversarial perturbation
    "amp": (
        *COMMON,
        *LAYERS,
        Param("model.amp_mask_ratio", 0.1, 0.8),
        log("loss.w_amp_mask", 0.01, 1.0),
        log("model.amp_eps", 0.1, 10.0),
    ),
    # MulT: the temporal convolutions' kernel per modality (odd)
    "mult": (
        *COMMON,
        Param("model.layers.text", 1, 4, integer=True),  # its one depth is the largest entry (audio, visual 1)
        Param("model.mult_kernels.text", choices=(1, 3, 5)),
        Param("model.mult_kernels.audio", choices=(1, 3, 5)),
        Param("model.mult_kernels.visual", choices=(1, 3, 5)),
    ),
}

SEARCHED: frozenset[str] = frozenset(p.key for space in (COMMON, *SPACES.values()) for p in space)  # every key

# RAMer's keys that a switched-off part no longer reads (``model.ablations``)
UNUSED_WHEN_OFF = {
    "no_reconstruction": ("loss.w_ae", "loss.w_cross", "loss.w_radv"),
    "no_contrastive": ("loss.w_cl", "model.temperature"),
    "no_adversarial": ("loss.w_adv",),
    "no_rec_adversarial": ("loss.w_radv",),
    "no_shuffle": ("loss.w_shuf",),
    "no_modality_dropout": ("model.modality_dropout",),
}


def space_for(cfg: Config, fixed: set[str] | frozenset[str] = frozenset()) -> tuple[Param, ...]:
    """The space of ``cfg.model.name`` (the common space without an entry of its own), less the
    keys of RAMer parts ``cfg.model.ablations`` switches off and the ``fixed`` keys (those the user
    set with ``--set``: a set value is kept, not searched)."""
    space = SPACES.get(cfg.model.name, COMMON)
    unused = {key for part in cfg.model.ablations for key in UNUSED_WHEN_OFF.get(part, ())}
    return tuple(p for p in space if p.key not in unused and p.key not in fixed)


def check_space(model: str, space) -> tuple[Param, ...]:
    """A registered model's space (``models.register_model``): ``Param`` of config keys, each
    range's values taken by its key."""
    params = tuple(space)
    seen: set[str] = set()
    for p in params:
        if not isinstance(p, Param):
            raise RamerError(f"model '{model}': its search space holds {p!r}, not a ramer.models.spaces.Param")
        if p.key in seen:  # Optuna would refuse the second draw in the first trial, with its traceback
            raise RamerError(f"model '{model}': its search space gives {p.key} twice; give each key once")
        seen.add(p.key)
        parts = p.key.split(".")
        if parts[:2] == ["model", "options"] and len(parts) > 2 and parts[2] != model:
            raise RamerError(
                f"model '{model}': its search space holds {p.key}, a setting of model '{parts[2]}', which "
                f"'{model}' never reads; its own are model.options.{model}.*"
            )
        ends = p.choices if p.choices is not None else (p.low, p.high)
        for value in ends:
            try:
                with_values(Config(), {p.key: value}, f"the value {value!r}")
            except RamerError as e:
                raise RamerError(f"model '{model}': search space {p.describe()}: {e}") from None
    return params


def format_value(value: Any, digits: int = 3) -> str:
    """A searched value as the tables show it (floats to ``digits`` significant digits)."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def format_values(values: dict[str, Any], digits: int = 3, short: bool = True) -> str:
    """``lr=0.000647, hidden=64, ...``; ``short``: each key without its section (``train.lr`` -> ``lr``)."""
    return ", ".join(f"{key.split('.', 1)[1] if short else key}={format_value(v, digits)}" for key, v in values.items())


def suggest(trial, space: tuple[Param, ...]) -> dict[str, Any]:
    """One trial's values: config key -> value."""
    return {p.key: p.suggest(trial) for p in space}
