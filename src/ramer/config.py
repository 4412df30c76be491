"""One typed config for a run: sections ``data``, ``model``, ``loss``, ``train``.

Every section forbids unknown keys, so a typo is an error that names the key (and the nearest known
one, where one is close). A config is built from defaults, then a YAML file, then ``--set a.b=c``
overrides, and the resolved result is saved in the run directory and inside the checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterable
from difflib import get_close_matches
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Mapping, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from ramer.errors import RamerError, first_line, too_many_digits, unreadable

CONFIG_DIR = Path(__file__).parent / "configs"  # the bundled configs (`--config NAME`)
DEFAULT_CONFIG_NAME = "synthetic"  # the bundled config a command reads without --config

ABLATIONS = (
    "no_personality",
    "no_modality_attention",
    "no_adversarial",
    "no_rec_adversarial",
    "no_reconstruction",
    "no_contrastive",
    "no_shuffle",
    "no_stack",
    "no_modality_dropout",
)
# What a label row means: ``multi_label`` (any number of labels; per-label sigmoids, a threshold)
# or ``single_label`` (exactly one label; softmax over the labels, the arg-max decides).
TASKS = ("multi_label", "single_label")


def _types(annotation) -> set:
    """The plain types an annotation admits (``float | None`` -> {float, NoneType})."""
    args = get_args(annotation)
    if not args or get_origin(annotation) is Literal:
        return {annotation}
    return set().union(*map(_types, args))


class _Section(BaseModel):
    # allow_inf_nan=False: every float key must be a finite number (nan, inf, YAML's .nan and .inf are errors)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value, info):
        """true/false is not a number (pydantic would read ``--set train.lr=true`` as 1.0)."""
        if isinstance(value, bool):
            kinds = _types(cls.model_fields[info.field_name].annotation)
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"a number, not {str(value).lower()} (YAML reads true, yes and on as true)")
        return value


MAX_SCENES, MAX_GRID, MAX_DIM = 10**7, 10**3, 2**16  # the embedded benchmark's largest sizes (MAX_DIM: a model's too)
# the largest of ramer's own models' sizes: past them a value is a slip (a digit too many), which would
# take the machine's memory or time before any check of it, or overflow torch's 64-bit sizes (a traceback)
MAX_LAYERS, MAX_KERNEL, MAX_QUEUE, MAX_POSITIONS, MAX_THREADS = 64, 1023, 2**24, 10**6, 4096
MAX_LOSS_WEIGHT = 1e6
MAX_SEED = 2**32 - 1  # train.seed: torch's generators take seed * 100003 + epoch (below 2**64)


class SynthConfig(_Section):
    """Knobs of the embedded benchmark (see spec SYNTHETIC.md)."""

    # upper bounds: sizes no machine holds are refused by the config, not by numpy's allocator
    seed: int = Field(0, ge=0)
    n_train: int = Field(4000, ge=1, le=MAX_SCENES)
    n_valid: int = Field(500, ge=1, le=MAX_SCENES)
    n_test: int = Field(1000, ge=1, le=MAX_SCENES)
    n_labels: int = Field(9, ge=2, le=14)
    n_characters: int = Field(8, ge=1, le=MAX_DIM)
    persons_min: int = Field(2, ge=1, le=MAX_GRID)
    persons_max: int = Field(6, ge=1, le=MAX_GRID)
    segments_min: int = Field(3, ge=1, le=MAX_GRID)
    segments_max: int = Field(10, ge=1, le=MAX_GRID)
    text_dim: int = Field(64, ge=1, le=MAX_DIM)
    audio_dim: int = Field(32, ge=1, le=MAX_DIM)
    visual_dim: int = Field(48, ge=1, le=MAX_DIM)
    personality_dim: int = Field(118, ge=1, le=MAX_DIM)
    trait_dim: int = Field(5, ge=1, le=MAX_DIM)
    face_visible: float = Field(0.7, ge=0.0, le=1.0)
    no_speaker_prob: float = Field(0.05, ge=0.0, le=1.0)
    flip_rate: float = Field(0.03, ge=0.0, le=0.5)
    missing_rate: float = Field(0.0, ge=0.0, le=1.0)
    # True: the same scenes with every modality present for every person at every segment (a
    # reference without missingness; missing_rate hides nothing then, data.missing_rate must be 0).
    complete: bool = False


class DataConfig(_Section):
    path: str | None = None  # None: the embedded synthetic benchmark
    format: str = "auto"
    labels: Literal["primary", "fine_grained"] = "primary"
    max_utterances: int = Field(60, ge=1)  # M3ED: utterances kept per dialogue
    # M3ED: one sample per dialogue (the published reading) or per utterance (labels from annotation.json)
    m3ed_protocol: Literal["dialogue", "utterance"] = "dialogue"
    m3ed_annotation: str | None = None  # M3ED utterance protocol: annotation.json (default: beside the pickle)
    aligned_path: str | None = None  # unaligned MOSEI: the aligned file giving labels (default: beside it)
    unaligned_layout: Literal["pool", "pad"] = "pool"  # unaligned MOSEI token layout (docs/DATA.md)
    memor_character_order: list[str] | None = None  # MEmoR character order (default: the MEmoR code's)
    memor_protocol: Literal["target", "clip"] = "target"  # MEmoR: a sample per annotation or per clip
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)  # MEmoR: share of train held out for validation
    valid_seed: int = Field(2020, ge=0)  # MEmoR: seed of that split
    # share of the present modality features hidden at random; 1 would hide every one (bench: [0, 1) too)
    missing_rate: float = Field(0.0, ge=0.0, lt=1.0)
    missing_at: Literal["all", "test"] = "all"
    task: Literal["auto", "multi_label", "single_label"] = "auto"  # auto: what the data records (docs/MODEL.md)
    synthetic: SynthConfig = Field(default_factory=SynthConfig)

    @field_validator("path", "aligned_path", "m3ed_annotation")
    @classmethod
    def _home(cls, value: str | None) -> str | None:
        """``~`` is the home folder, as in a shell (a config file or ``--set`` is not expanded by one)."""
        return os.path.expanduser(value) if value else value


MISSING_AT = get_args(DataConfig.model_fields["missing_at"].annotation)  # bench's and the CLI's --missing-at


class LayersConfig(_Section):
    text: int = Field(2, ge=0, le=MAX_LAYERS)
    audio: int = Field(1, ge=0, le=MAX_LAYERS)
    visual: int = Field(1, ge=0, le=MAX_LAYERS)


class KernelsConfig(_Section):
    """MulT's temporal convolution kernel per modality (odd: the output keeps the sequence length)."""

    text: int = Field(3, ge=1, le=MAX_KERNEL)
    audio: int = Field(3, ge=1, le=MAX_KERNEL)
    visual: int = Field(3, ge=1, le=MAX_KERNEL)

    @field_validator("text", "audio", "visual")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"kernel {value} is even; an odd size keeps the sequence length")
        return value


class ModelConfig(_Section):
    name: str = "ramer"
    hidden: int = Field(64, ge=8, le=MAX_DIM)
    heads: int = Field(4, ge=1, le=MAX_DIM)
    ffn: int = Field(128, ge=8, le=MAX_DIM)
    layers: LayersConfig = Field(default_factory=LayersConfig)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    proj_size: int = Field(32, ge=2, le=MAX_DIM)  # auto-encoder code size P (paper: 64)
    queue_size: int = Field(1024, ge=0, le=MAX_QUEUE)  # contrastive memory queue (paper: 8192)
    temperature: float = Field(0.07, gt=0.0)
    proto_momentum: float = Field(0.99, ge=0.0, lt=1.0)
    modality_dropout: float = Field(0.15, ge=0.0, lt=1.0)
    beta: bool = False  # CARAT's second reconstruction pass
    # what stands in for a modality missing from the target scope (docs/MODEL.md, "stand-ins"):
    # prototype: r~_m with p^_m in F_m's own slot (the spec's literal reading); own_slot: r~_m with the
    # context-built r^_m in its own slot; gate: a learned gate between r_m and r~_m; context: r_m itself
    stand_in: Literal["prototype", "own_slot", "gate", "context"] = "gate"
    # rows of the learned segment-position table (S must not exceed it)
    max_segments: int = Field(512, ge=1, le=MAX_POSITIONS)
    # RAMer: learned embedding of each token's segment offset from the target, clipped to +-this; 0 = off
    target_offset: int = Field(16, ge=0, le=MAX_POSITIONS)
    # RAMer: learned label-attention bonus of the target token, its start; null = off
    target_prior: float | None = Field(2.0, ge=-1e4, le=1e4)
    # stack-shuffle permutations (docs/MODEL.md): random (a new draw per label, source and sample) or
    # pile (the RAMer authors' fixed card deal); null: the model's own (ramer random, ramer-authors pile)
    shuffle: Literal["random", "pile"] | None = None
    # MulT: kernel of the temporal Conv1D along each person's segments, per modality (Tsai et al. 2019,
    # Table 5, CMU-MOSEI: text 1 or 3, visual 3, audio 3; docs/MODEL.md, "MulT")
    mult_kernels: KernelsConfig = Field(default_factory=KernelsConfig)
    # AMP: the learned adversarial masker hides at most this share of a sample's present tokens of each
    # modality (the authors' top-k: 24 of the 50 steps of aligned CMU-MOSEI); 0 = no masked pass
    amp_mask_ratio: float = Field(0.48, ge=0.0, lt=1.0)
    # AMP: L2 size of the adversarial perturbation of each sample's label representations (the authors' 1.0)
    amp_eps: float = Field(1.0, gt=0.0)
    # ML-GCN: the label graph's binarising threshold tau and re-weighting p (Chen et al. 2019: 0.4, 0.2)
    mlgcn_tau: float = Field(0.4, ge=0.0, le=1.0)
    mlgcn_p: float = Field(0.2, ge=0.0, lt=1.0)
    ablations: list[str] = Field(default_factory=list)
    # settings of models of other packages, by model name: model.options.NAME.KEY, read by that
    # model's builder (ramer.models.model_options); ramer's own models take none (docs/ARCHITECTURE.md)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "ModelConfig":
        if self.hidden % self.heads:
            raise ValueError(
                f"model.hidden {self.hidden} is not divisible by model.heads {self.heads}; choose heads that divide it"
            )
        return self

    @field_validator("ablations")
    @classmethod
    def _known_ablations(cls, value: list[str]) -> list[str]:
        unknown = [a for a in value if a not in ABLATIONS]
        if unknown:
            raise ValueError(f"unknown ablation(s) {unknown}; known: {list(ABLATIONS)}")
        return value

    def off(self, part: str) -> bool:
        """True when the ablation switch ``part`` (e.g. ``"no_shuffle"``) is set."""
        assert part in ABLATIONS, part
        return part in self.ablations


class LossConfig(_Section):
    """Weights of the total loss (spec MODEL.md section 7)."""

    w_lsr: float = 0.01
    w_aug: float = 0.1
    w_cl: float = 0.1  # the authors used 1.0; 0.1 learns faster early (docs/MODEL.md decision 12)
    w_ae: float = 1.0
    w_cross: float = 1.0
    w_agg: float = 1.0
    w_shuf: float = 1.0
    w_adv: float = 0.01
    w_orth: float = 0.01  # on L2-normalised features (the authors' 5e-6 was unnormalised)
    w_cml: float = 0.5
    w_radv: float = 0.01
    w_pers: float = 0.1
    w_beta: float = 1.0  # CARAT's second-pass ("beta") reconstruction MSE; used only when model.beta is on
    # ramer-authors only (docs/MODEL.md, "the authors' RAMer"): its terms without a counterpart above
    w_beta_cls: float = 1.0  # classification of the second-pass features (the authors' beta_clf)
    w_beta_mse: float = 0.0  # their MSE to r_m (the authors' beta_mse, weight 0 in their script)
    w_diff: float = 5e-6  # orthogonality on unnormalised features (the authors' diff)
    w_amp_mask: float = 0.1  # AMP only: classification loss of the adversarially masked pass (the authors' 0.1)
    # reconstruction targets r_m taken as constants: L_ae / L_cross then train the reconstruction
    # without pulling r_m towards it (false: CARAT's joint gradient, which also shrinks r_m)
    detach_targets: bool = True

    @field_validator("*")
    @classmethod
    def _no_negative_weight(cls, value, info):
        if info.field_name.startswith("w_") and value < 0:
            raise ValueError(f"a loss weight must be 0 or more, not {value}")
        if info.field_name.startswith("w_") and value > MAX_LOSS_WEIGHT:  # 1e300 makes the loss inf at step 0
            raise ValueError(f"a loss weight must be at most {MAX_LOSS_WEIGHT:g}, not {value:g}")
        return value


class TrainConfig(_Section):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    warmup: float = Field(0.1, ge=0.0, le=1.0)  # share of steps with linear warm-up
    grad_clip: float = Field(1.0, gt=0.0)
    seed: int = Field(1, ge=0, le=MAX_SEED)
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, le=MAX_THREADS)  # torch intra-op threads; None keeps torch's default
    per_label_threshold: bool = False
    max_train_batches: int | None = Field(None, ge=1)  # cap per epoch (smoke runs)
    # Early stopping: stop once validation's selection score has not improved for this many
    # epochs; None trains all ``epochs`` (the cap, which the learning-rate schedule spans).
    patience: int | None = Field(None, ge=1)
    # Validation, the checkpoint and test use an exponential moving average of the weights with this
    # decay per optimiser step, after a warm-up of the decay (ramer.train.ema; 0.995 is reached after
    # about 1,790 steps); None uses the weights as trained.
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: forward and loss under torch.autocast(bfloat16)
    # keep only each transformer layer's input of the modality encoders in training and run the layer
    # again in backward: less memory, more time, the same values (docs/PERFORMANCE.md §4)
    recompute: bool = False
    # every scalar of metrics.jsonl also as TensorBoard event files in RUN/tensorboard (needs 'ramer[tensorboard]')
    tensorboard: bool = False


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    # the YAML file build_config read (``check_corpus_config_has_data``); not a key, never written
    _file: Path | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:  # the keys' values, not the file they were read from
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__


def config_keys(section: type[_Section], prefix: str = "") -> list[str]:
    """Every dotted key of a section (``model.hidden``, ``data.synthetic.n_train``, ...): the names
    an unknown key is compared with, for a 'did you mean' that also catches a key in the wrong
    section, and those the CLI names for a flag that is one (``--epochs``: ``train.epochs``)."""
    keys = []
    for name, field in section.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, _Section):
            keys += config_keys(kind, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _describe(err: ValidationError, source: str) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"])
        if e["type"] == "extra_forbidden":
            keys = config_keys(Config)
            leaf = key.rsplit(".", 1)[-1]
            moved = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]  # in another section
            # misspelled and in another section (train.hiden): the keys whose own name is nearest
            leaves = get_close_matches(leaf, {k.rsplit(".", 1)[-1] for k in keys}, n=1, cutoff=0.8)
            respelled = [k for k in keys if k.rsplit(".", 1)[-1] in leaves]
            # a key or section written in other case (Train.lr, train.LR): the one it names
            names = {".".join(k.split(".")[:i]) for k in keys for i in range(1, k.count(".") + 2)}
            folded = [n for n in names if n.lower() == key.lower()]
            near = (
                folded
                or get_close_matches(key, moved, n=1, cutoff=0)
                or get_close_matches(key, keys, n=1, cutoff=0.8)
                or get_close_matches(key, respelled, n=1, cutoff=0)
            )
            parts.append(f"unknown key '{key}'" + (f" (did you mean '{near[0]}'?)" if near else ""))
        elif e["type"] == "list_type":  # the --set form of a list is easy to miss
            # the given value only where it is one short scalar: a mapping or a long text (a huge tree
            # made of YAML aliases) is not formatted into a one-line message
            given = e["input"] if isinstance(e["input"], (str, int, float)) and len(str(e["input"])) <= 40 else "a,b"
            parts.append(f"'{key}': {e['msg']} (written [a,b], e.g. --set {key}=[{given}])")
        elif e["type"] in ("value_error", "missing"):  # ramer's own checks word the value themselves
            parts.append(f"'{key}': {e['msg']}")
        else:
            parts.append(f"'{key}': {e['msg']} (got {_cut(repr(e['input']))})")
    return f"invalid config ({source}): " + "; ".join(parts)


def _cut(text: str, keep: int = 60) -> str:
    """``text`` cut to ``keep`` characters, an ellipsis where it was cut."""
    return text if len(text) <= keep else text[:keep] + "..."


def _source_name(file: str | os.PathLike) -> str:
    """A config file as an error names it: a bundled config as such (``ramer train`` without
    ``--config`` reads synthetic.yaml, which the user never named), any other by its path."""
    path = Path(file)
    if path.parent.resolve() == CONFIG_DIR.resolve():
        return f"the {'default' if path.stem == DEFAULT_CONFIG_NAME else 'bundled'} config {path.name}"
    return str(file)


class AliasRefused(yaml.composer.ComposerError):
    """An alias in a config (``_NoAliasLoader``)."""


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags) that refuses aliases (``*name``): a config never needs
    them, and nested ones expand a file of a few hundred bytes into billions of values; and a key
    given twice in one mapping (YAML's last one would win without a word)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise AliasRefused(None, None, "a YAML alias (*name)", self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key '{key}' given twice in one mapping", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


class NotDecimal(yaml.constructor.ConstructorError):
    """A number in a config file that YAML reads other than as written in decimal (``_FileLoader``)."""


class _FileLoader(_NoAliasLoader):
    """``_NoAliasLoader`` that also refuses a number YAML 1.1 reads other than as its text says in
    decimal: ``seed: 010`` (octal 8), ``1:30`` (90), ``0x1f``, ``!!int 010``."""

    def _as_written(self, node, value):
        if problem := _not_as_written(node.value, value):
            raise NotDecimal(None, None, problem, node.start_mark)
        return value

    def construct_yaml_int(self, node):
        return self._as_written(node, super().construct_yaml_int(node))

    def construct_yaml_float(self, node):
        return self._as_written(node, super().construct_yaml_float(node))


_FileLoader.add_constructor("tag:yaml.org,2002:int", _FileLoader.construct_yaml_int)
_FileLoader.add_constructor("tag:yaml.org,2002:float", _FileLoader.construct_yaml_float)


def load_yaml_text(text: str, loader: type[_NoAliasLoader] = _NoAliasLoader) -> Any:
    """YAML text as a config file is read: no Python tags, no aliases, no key given twice (a
    ``yaml.YAMLError`` names the place); ``loader=_FileLoader``: numbers as written, too."""
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader: Python tags are refused
    except ValueError as e:  # a scalar the reader's constructor cannot convert
        if too_many_digits(e):
            raise yaml.YAMLError(f"a number of more than {sys.get_int_max_str_digits()} digits") from None
        raise yaml.YAMLError(f"a value it cannot read ({first_line(e)})") from None
    except RecursionError:  # PyYAML's composer and constructor recurse once per level of nesting
        raise yaml.YAMLError("lists or mappings nested too deeply") from None


def _admits_str(annotation) -> bool:
    """Whether a field's annotation admits a plain string (``str``, ``str | None``; not ``list[str]``)."""
    return annotation is str or (
        get_origin(annotation) in (Union, UnionType) and any(map(_admits_str, get_args(annotation)))
    )


def _field_annotation(key: str) -> Any:
    """The annotation of the config field a dotted key names; None where the key names none."""
    model: Any = Config
    annotation = None
    for part in key.strip().split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        annotation = model = model.model_fields[part].annotation
    return annotation


def _not_as_written(text: str, value: int | float) -> str | None:
    """What is wrong where the finite number YAML read from ``text`` (``value``) is not what ``text``
    says written in decimal: 010 (YAML 1.1's octal 8), 0b101, 0x1f, 1:30 (90), a tag (!!int 010);
    None where it is, and for inf and NaN (the field's own error)."""
    bare = re.sub(r"\s+#.*", "", text)  # a comment after it
    with contextlib.suppress(ValueError):
        if not math.isfinite(value) or (int(bare) if isinstance(value, int) else float(bare)) == value:
            return None
    return f"YAML reads {text} as {value}; write the number in decimal digits"


def _one_quoted_scalar(text: str) -> bool:
    """Whether ``text`` is one quoted YAML scalar, whole (``'my ds'``; not ``'ds' #c``)."""
    try:
        tokens = [t for t in yaml.scan(text) if not isinstance(t, (yaml.StreamStartToken, yaml.StreamEndToken))]
    except yaml.YAMLError:
        return False
    return (
        len(tokens) == 1
        and isinstance(tokens[0], yaml.ScalarToken)
        and tokens[0].style in ("'", '"')
        and tokens[0].start_mark.index == 0
        and tokens[0].end_mark.index == len(text)
    )


def _parse_value(text: str, annotation: Any = None) -> Any:
    """A ``--set`` value is read as YAML: ``3`` is an int, ``[a, b]`` a list, ``null`` (or nothing)
    None. For a field that takes a string (``annotation``: ``str``, ``str | None``) a scalar is the
    text given, unquoted where it is one quoted string: ``data.path=2024`` is the folder 2024, not
    the number, and ``data.path=ds #2`` the folder ``ds #2``, not ``ds`` and a comment. A number YAML
    reads other than as written in decimal (``010``, octal 8) is a ValueError."""
    try:
        value = load_yaml_text(text)
    except yaml.YAMLError:
        return text
    raw = text.strip()
    if _admits_str(annotation) and value is not None and not isinstance(value, (list, dict)):
        # the text as given: YAML read a number, true/false or a date in it, or cut a comment, tag or anchor off
        return value if isinstance(value, str) and _one_quoted_scalar(raw) else raw
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (problem := _not_as_written(raw, value)):
        raise ValueError(problem)
    return value


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def set_in_tree(tree: dict, key: str, value: Any, source: str = "--set") -> None:
    """Set the dotted ``key`` of a nested dict to ``value``, in place; errors start with ``source``."""
    path = key.strip().split(".")
    if not all(path):
        raise RamerError(f"{source}: malformed key '{key}'")
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RamerError(f"{source}: '{key}' goes below '{part}', which is not a section")
        node = child
    node[path[-1]] = value


def apply_override(tree: dict, assignment: str) -> None:
    """Apply one ``a.b=c`` assignment to a nested dict, in place."""
    if "=" not in assignment:
        raise RamerError(f"--set expects KEY=VALUE, got '{assignment}'")
    key, value = assignment.split("=", 1)
    annotation = _field_annotation(key)
    if _is_section(annotation):  # a mapping there would replace the section, and every value it holds
        raise RamerError(
            f"--set {assignment}: '{key.strip()}' is a section; set its keys one by one ({key.strip()}.KEY=VALUE)"
        )
    try:
        parsed = _parse_value(value, annotation)
    except ValueError as e:
        raise RamerError(f"--set {assignment}: {e}") from None
    set_in_tree(tree, key, parsed)


def yaml_problem(e: yaml.YAMLError) -> str:
    """What a YAML parser objects to and where: "expected ',' or ']', but got '<stream end>' (line 3,
    column 1)"; the first line of the message where the error has no position."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return first_line(e)


def read_yaml(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if path.is_dir():
        raise RamerError(f"{path}: is a folder, not a config file")
    try:
        tree = load_yaml_text(path.read_text(encoding="utf-8"), _FileLoader) or {}
    except FileNotFoundError:
        raise RamerError(f"{path}: config file not found") from None
    except OSError as e:
        raise unreadable(path, e) from None
    except UnicodeDecodeError as e:
        raise RamerError(f"config file {path} is not UTF-8 text ({first_line(e)})") from None
    except AliasRefused as e:
        raise RamerError(
            f"config file {path} uses {yaml_problem(e)}; a config takes no aliases: write the values out"
        ) from None
    except NotDecimal as e:
        raise RamerError(f"config file {path}: {yaml_problem(e)}") from None
    except yaml.YAMLError as e:
        raise RamerError(f"config file {path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(tree, dict):
        raise RamerError(f"config file {path} must hold a mapping, not {type(tree).__name__}")
    return tree


def build_config(file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML ``file`` <- ``overrides`` (``key=value`` strings, as ``--set`` takes them);
    errors name the bad key."""
    if not isinstance(overrides, (str, bytes)) and isinstance(overrides, Iterable):
        overrides = list(overrides)  # a generator is read once, here
    if not isinstance(overrides, list) or not all(isinstance(x, str) for x in overrides):
        raise RamerError(
            f"build_config: overrides is a list of 'key=value' strings (e.g. ['train.epochs=3']), not {overrides!r:.80}"
        )
    if file is not None and not isinstance(file, (str, os.PathLike)):
        hint = " (a dict: config_from_dict(tree, source))" if isinstance(file, Mapping) else ""
        raise RamerError(f"build_config: file is a config file's path (a str or Path), not {type(file).__name__}{hint}")
    if isinstance(file, str) and not Path(file).exists() and (CONFIG_DIR / f"{file}.yaml").is_file():
        raise RamerError(
            f"{file}: config file not found; for the bundled config of that name: "
            f"build_config(resolve_config({file!r}), ...)"
        )
    tree: dict = {}
    source = "defaults"
    if file is not None:
        tree = read_yaml(file)
        source = _source_name(file)
    for assignment in overrides:
        apply_override(tree, assignment)
    if overrides:
        source += " + --set"
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise RamerError(_describe(e, source)) from None
    cfg._file = Path(file) if file is not None else None
    return cfg


def config_from_dict(tree: dict, source: str) -> Config:
    """A Config from a nested dict (``{"model": {"hidden": 16}}``, defaults for the rest); an error
    names ``source`` and the bad key."""
    try:
        return Config.model_validate(tree)
    except ValidationError as e:
        raise RamerError(_describe(e, source)) from None


# Keys added after configs were first stored whose default today is not what runs made before
# them did: a stored config (a run's config.yaml, a model file's, a training state's, a study's)
# that lacks one was made with the earlier behaviour, given here.
BEFORE_THE_KEY = {
    ("model", "stand_in"): "prototype",
    ("model", "target_prior"): None,
    ("loss", "detach_targets"): False,
}


def fill_older_config(tree: dict) -> dict:
    """A copy of a stored config tree with the keys of ``BEFORE_THE_KEY`` it lacks set to their
    earlier behaviour."""
    tree = dict(tree)
    for (section, key), value in BEFORE_THE_KEY.items():
        part = tree.get(section)
        if isinstance(part, dict) and key not in part:
            tree[section] = {**part, key: value}
    return tree


def unknown_keys(tree: dict, section: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """The dotted keys of a config tree that ``section`` has no field for: what a newer ramer's config
    holds that this one's lacks."""
    found = []
    for key, value in tree.items():
        field = section.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            found.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += unknown_keys(value, field.annotation, f"{prefix}{key}.")
    return found


def with_todays_defaults(tree: dict, source: str) -> dict:
    """A stored config (a run's ``config.yaml``, a study's) read back as today's config would dump
    it: the keys added since take their defaults, so a new option at its default does not make an
    older run or study another one, or their earlier behaviour where today's default differs
    (``BEFORE_THE_KEY``). Raises ``RamerError`` where the tree no longer validates."""
    return config_from_dict(fill_older_config(tree), source).model_dump(mode="json")


def read_run_config(path: str | Path) -> Config:
    """A run folder's ``config.yaml``, perhaps written by an older ramer: keys added since take
    today's defaults, or their earlier behaviour (``BEFORE_THE_KEY``), so the run reads back as it
    was made. (``build_config`` reads a config a user wrote: there a key left out is today's default.)
    ``checkpoint.run_config`` adds which ramer wrote the run where it does not read."""
    return config_from_dict(fill_older_config(read_yaml(path)), str(path))


def as_today(tree: dict, source: str) -> dict:
    """A stored config tree with today's defaults for the keys added since (``with_todays_defaults``);
    as stored where it no longer validates (a comparison then names what differs)."""
    try:
        return with_todays_defaults(tree, source)
    except RamerError:
        return tree


def with_values(cfg: Config, values: Mapping[str, Any], source: str = "values") -> Config:
    """A copy of ``cfg`` with dotted keys set to values (``{"train.lr": 3e-4, "model.layers.text": 2}``);
    the result is validated, so an unknown key or a bad value is an error naming it."""
    tree = cfg.model_dump(mode="json")
    for key, value in values.items():
        set_in_tree(tree, key, value, source)
    return config_from_dict(tree, source)


_ABSENT = object()  # a key one config has and the other lacks

# Keys that change how a run computes, not what it computes (the same weights to the bit): a cached
# bench run, a tune study and a resumed run are the same with either value.
SAME_RESULTS = ("train.recompute",)


def result_differences(a: Any, b: Any) -> list[str]:
    """``differences`` of two config trees but for ``SAME_RESULTS`` and the settings of models other
    than ``b``'s (``model.options.NAME``, which only model NAME reads; a bench's ``--set`` gives every
    run those of each model): the keys that change what a run computes (a cached bench run and a
    tune study are the same with either value of the others)."""
    name = b.get("model", {}).get("name") if isinstance(b, dict) else None
    own = f"model.options.{name}"

    def read(key: str) -> bool:
        return not key.startswith("model.options.") or key == own or key.startswith(own + ".")

    return [d for d in differences(a, b) if d not in SAME_RESULTS and read(d)]


def differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys in which two config trees (``Config.model_dump(mode="json")``) differ; a key
    one of them lacks counts as a difference."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted({*a, *b})
        return [d for k in keys for d in differences(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def set_keys(overrides: list[str] | tuple[str, ...]) -> set[str]:
    """The dotted keys ``--set KEY=VALUE`` assignments set (what a search leaves fixed)."""
    return {a.split("=", 1)[0].strip() for a in overrides if "=" in a}


class _NoAliasDumper(yaml.SafeDumper):
    """Writes a value met twice out twice: a config takes no aliases (``_NoAliasLoader``)."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump_config(cfg: Config) -> str:
    return yaml.dump(cfg.model_dump(mode="json"), Dumper=_NoAliasDumper, sort_keys=False)


def kept_from_file(config: str | Path | None, sets: tuple[str, ...]) -> tuple[str, ...]:
    """A command's own defaults ``sets`` (``key=value``, applied over the config file) less the keys
    that a user's config file ``config`` sets: the file's value is kept. A bundled config's values
    are ``ramer train``'s, and the command's defaults apply over them (``None``: the bundled
    synthetic config)."""
    if config is None or Path(config).resolve().parent == CONFIG_DIR.resolve():
        return tuple(sets)
    given: set[str] = set()

    def walk(tree, prefix: str) -> None:
        for key, value in tree.items():
            given.add(prefix + str(key))
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")

    walk(read_yaml(config), "")
    return tuple(x for x in sets if x.split("=", 1)[0] not in given)


def check_flag_sets(overrides: list[str] | tuple[str, ...], flags: dict[str, tuple[str, ...]]) -> None:
    """A ``--set`` (in ``overrides``) of a key that a flag given also sets (``flags``: each flag given
    -> its keys; ``--data``: ``data.path``) is a RamerError: the flag's value would win."""
    given = set_keys(overrides)
    for flag, keys in flags.items():
        if twice := [k for k in keys if k in given]:
            raise RamerError(f"--set {twice[0]}: {flag} gives it; give one of the two")


def check_generator_sets(cfg: Config, overrides: list[str] | tuple[str, ...]) -> None:
    """A ``--set data.synthetic.KEY`` (in ``overrides``) for a run of data read from ``data.path`` is
    a RamerError: the generator's settings do not apply there. (Those of a config file are not
    refused: the bundled ones set them for any data.)"""
    given = sorted(k for k in set_keys(overrides) if k.startswith("data.synthetic."))
    if given and cfg.data.path is not None:
        raise RamerError(
            f"--set {given[0]}: a setting of the embedded benchmark's generator, and the data is read from "
            f"{cfg.data.path}, so it would be ignored; leave it out (or the data path, for the embedded benchmark)"
        )


def check_corpus_config_has_data(cfg: Config) -> None:
    """A config read from a bundled config made for a corpus the user brings (every one but
    ``synthetic``: ``mosei``, ``m3ed``, ...) with no data path is a RamerError: it trained the
    corpus's model and settings on the embedded benchmark without a word, and its table read as the
    corpus's results. ``cfg``'s file is the one ``build_config`` read."""
    path = cfg._file
    if path is None or cfg.data.path is not None:
        return
    if path.resolve().parent == CONFIG_DIR.resolve() and path.stem != DEFAULT_CONFIG_NAME:
        raise RamerError(
            f"--config {path.stem} is for a corpus you bring ({path.name}: data.path is null); give --data PATH, "
            "or leave --config out for the embedded benchmark"
        )


def resolve_config(name: str | None) -> Path:
    """A config file path, or the name of a bundled config (``synthetic``, ``mosei``, ...); ``None``
    (no --config) the embedded benchmark's. A bundled config's name is that config, even where a file
    or folder of the name is in the current folder (a data folder ``mosei``, a dataset ``synthetic``
    refused plain ``ramer train``); the file there is ``./NAME``."""
    if name is not None and not name.strip():
        raise RamerError("--config: empty; give a config file or a bundled config's name (or leave --config out)")
    name = name or DEFAULT_CONFIG_NAME
    path = Path(name).expanduser()
    bare = path.suffix not in (".yaml", ".yml") and not any(sep and sep in name for sep in ("/", os.sep, os.altsep))
    if bare and (CONFIG_DIR / f"{name}.yaml").is_file():  # a folder or file of that name here is ./NAME
        return CONFIG_DIR / f"{name}.yaml"
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise RamerError(
                f"{path}: " + ("is a folder, not a config file" if path.is_dir() else "config file not found")
            )
        return path
    bundled = CONFIG_DIR / f"{name}.yaml"
    if not bundled.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise RamerError(f"no config named '{name}'; bundled: {', '.join(known)}")
    return bundled
