"""Model registry: every model name a run takes (``--model NAME``): the deep models' builders (among
them ``ramer-authors``, the authors' own design), the classical baselines, the
``ramer-<ablation>`` presets (RAMer with one part switched off), and the models of other packages:
``register_model`` in one process, or an entry point of the group ``ramer.models`` for every
command (docs/ARCHITECTURE.md, "Adding a model"). An installed model's code is imported only when a
run names it."""

from __future__ import annotations

import inspect
import re
import traceback
from difflib import get_close_matches
from importlib.metadata import entry_points
from typing import Callable, Iterable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ramer.config import ABLATIONS, Config
from ramer.errors import RamerError, first_line
from ramer.models.base import DataSpec, LossResult
from ramer.models.parts.encoders import modality_encoders


def _late_fusion(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.late_fusion import LateFusion

    return LateFusion(cfg.model, cfg.loss, spec)


def _ramer(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.ramer import RAMer

    return RAMer(cfg.model, cfg.loss, spec)


def _ramer_authors(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.ramer_authors import RAMerAuthors

    return RAMerAuthors(cfg.model, cfg.loss, spec)


def _mult(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.mult import MulT

    return MulT(cfg.model, cfg.loss, spec)


def _mlgcn(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.mlgcn import MLGCN

    return MLGCN(cfg.model, cfg.loss, spec)


def _hhmpn(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.hhmpn import HHMPN

    return HHMPN(cfg.model, cfg.loss, spec)


def _amp(cfg: Config, spec: DataSpec) -> nn.Module:
    from ramer.models.amp import AMP

    return AMP(cfg.model, cfg.loss, spec)


BUILDERS: dict[str, Callable[[Config, DataSpec], nn.Module]] = {
    "late_fusion": _late_fusion,
    "ramer": _ramer,
    "ramer-authors": _ramer_authors,  # the authors' released design (docs/MODEL.md)
    "mult": _mult,
    "mlgcn": _mlgcn,
    "hhmpn": _hhmpn,
    "amp": _amp,
}

OWN = frozenset(BUILDERS)  # this package's deep models; the others are registered or installed

# Not nn.Modules: scikit-learn baselines, see ramer.models.classical.ClassicalModel.
CLASSICAL: tuple[str, ...] = ("br", "cc", "lp")


BASELINES: tuple[str, ...] = ("br", "cc", "lp", "mlgcn", "late_fusion", "mult", "hhmpn", "amp")
PRESETS: dict[str, str] = {f"ramer-{a}": a for a in ABLATIONS}  # preset name -> the part it switches off
KNOWN: set[str] = {*BUILDERS, *CLASSICAL, *PRESETS}


class UnknownModel(RamerError):
    """No model of this package, preset or installed model has the name asked for."""


ENTRY_POINTS = "ramer.models"  # the entry-point group of the models other packages install
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]*(?:-[A-Za-z0-9_]+)*\Z")  # a folder name in bench's runs/


def register_model(name: str, builder: Callable[[Config, DataSpec], nn.Module], space: Iterable | None = None) -> None:
    """Add a deep model under ``name`` in this process: ``builder(cfg, spec)`` returns the
    ``nn.Module`` (the contract in ``ramer.models.base``). ``space``: the ``spaces.Param`` that
    ``ramer tune`` searches for it (default ``spaces.COMMON``). Registering the same builder again
    only replaces its space. A name registered in this process may be registered again with a new
    builder (a notebook cell run again, a module reloaded), which replaces the builder and its space;
    a name of this package's models or of an installed model is an error, but for the installed
    model's own builder defined again (its module reloaded)."""
    from ramer.models.spaces import SPACES, check_space

    if not isinstance(name, str) or not NAME.match(name):
        raise RamerError(
            f"model name {name!r}: letters, digits and '_', starting with a letter or digit, in parts joined by '-' "
            "(it names run folders)"
        )
    if name.startswith("ramer-"):
        raise RamerError(f"model name '{name}': names 'ramer-<part>' are RAMer's ablation presets")
    if not callable(builder):
        raise RamerError(f"model '{name}': the builder must be callable as builder(cfg, spec), not {builder!r}")
    try:
        inspect.signature(builder).bind(None, None)
    except TypeError:  # it would fail at the first run, in ramer's own file
        raise RamerError(
            f"model '{name}': the builder {getattr(builder, '__qualname__', builder)}"
            f"{inspect.signature(builder)} must take (cfg, spec): the run's Config and a DataSpec"
        ) from None
    except ValueError:  # no signature to read (some built-in callables): its first run says
        pass
    replaced = name in KNOWN and BUILDERS.get(name) is not builder
    if replaced and (_ours(name) or (name in _installed() and not _reloaded(BUILDERS.get(name), builder))):
        raise RamerError(f"model name '{name}' is taken; known: {known_models()}")
    checked = check_space(name, space) if space is not None else None  # before anything changes
    if replaced:  # registered here before, with another builder: this one replaces it and its space
        SPACES.pop(name, None)
    if checked is not None:
        SPACES[name] = checked
    BUILDERS[name] = builder
    KNOWN.add(name)


def _reloaded(old, new) -> bool:
    """``new`` is ``old`` defined again: a function or class of the same name, module and file (an
    installed model's module that registers itself on import, reloaded in a notebook with
    ``importlib.reload``). Not a partial, a callable object or a closure of one factory (another
    builder under the same names)."""
    if not all(inspect.isfunction(b) or inspect.isclass(b) for b in (old, new)):
        return False
    if "<locals>" in old.__qualname__:  # made by a factory: one name for many builders
        return False
    same = (old.__module__, old.__qualname__) == (new.__module__, new.__qualname__)
    try:
        return same and inspect.getfile(old) == inspect.getfile(new)
    except TypeError:  # a class defined where no file is (a built-in module)
        return False


def _installed() -> dict[str, list]:
    """The entry points of the ``ramer.models`` group, by name (their code is not imported)."""
    found: dict[str, list] = {}
    for ep in entry_points(group=ENTRY_POINTS):
        found.setdefault(ep.name, []).append(ep)
    return found


def _origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    return f"{ep.value}, from {dist.name}" if dist is not None else ep.value


def _load_installed(name: str) -> bool:
    """Register the installed model ``name`` (an entry point of ``ENTRY_POINTS`` naming its builder);
    False when none is installed under that name."""
    eps = _installed().get(name, [])
    if len(eps) > 1:
        raise RamerError(f"model '{name}' is installed twice: {'; '.join(map(_origin, eps))}; uninstall one")
    if not eps:
        return False
    (ep,) = eps
    try:
        builder = ep.load()
    except Exception as e:  # the plugin's own import error, whatever it is
        raise RamerError(f"model '{name}' ({_origin(ep)}) failed to load: {type(e).__name__}: {first_line(e)}") from e
    register_model(name, builder)  # a module that registered its builder on import keeps its space
    return True


def _ours(name: str) -> bool:
    """``name`` is one of this package's models: deep, classical, or a ``ramer-<ablation>`` preset."""
    return name in OWN or name in CLASSICAL or name in PRESETS


def _not_shadowed(name: str) -> None:
    """A RamerError when an installed package gives a model of this package's name (``name``), which
    would otherwise be ignored without a word."""
    eps = _installed().get(name) if _ours(name) else None
    if eps:
        raise RamerError(
            f"model '{name}' is ramer's own, and {'; '.join(map(_origin, eps))} installs another under that "
            f"name; rename its entry point (group {ENTRY_POINTS})"
        )


def is_known(name: str) -> bool:
    """Whether a run takes ``name``: a model of this package, a preset, or an installed model
    (imported here)."""
    if name in KNOWN:
        _not_shadowed(name)
        return True
    return _load_installed(name)


def known_models() -> str:
    """The model names a run takes, for error messages (installed models by name, unimported)."""
    names = sorted({*BUILDERS, *CLASSICAL, *_installed()} - set(PRESETS))
    return f"{', '.join(names)}, ramer-<ablation> ({', '.join(ABLATIONS)})"


def nearest_model(given: str) -> str:
    """``"did you mean 'NAME'? "`` for the known model name (or preset) nearest to ``given`` when one
    is close, else ``""``: the start of an unknown model's list of known ones."""
    near = get_close_matches(given, [*BUILDERS, *CLASSICAL, *_installed(), *PRESETS], n=1, cutoff=0.75)
    return f"did you mean '{near[0]}'? " if near else ""


def set_model(cfg: Config, name: str) -> None:
    """Set ``cfg.model`` to a model name or a ``ramer-<ablation>`` preset, in place."""
    if not is_known(name):
        raise UnknownModel(f"unknown model '{name}'; {nearest_model(name)}known: {known_models()}")
    if name in PRESETS:
        cfg.model.name = "ramer"
        if PRESETS[name] not in cfg.model.ablations:
            cfg.model.ablations = [*cfg.model.ablations, PRESETS[name]]
    else:
        cfg.model.name = name


def check_options(cfg: Config) -> None:
    """Each ``model.options.NAME`` names a model of another package that is registered or installed
    (a run of any model may carry them: ``ramer bench``'s ``--set`` is shared by every model)."""
    for name in cfg.model.options:
        if _ours(name):
            raise RamerError(
                f"model.options.{name}: '{name}' is ramer's own model, whose settings are the keys of model.* and "
                f"loss.*; model.options holds those of models of other packages"
            )
        if not is_known(name):
            raise UnknownModel(
                f"model.options.{name}: no model '{name}' is registered or installed; "
                f"{nearest_model(name)}known: {known_models()}"
            )


def model_options(cfg: Config) -> dict:
    """The run's model's own settings, ``model.options.<its name>`` (empty when none are set): what a
    model of another package reads in its builder, with its own defaults for the keys not set."""
    return dict(cfg.model.options.get(cfg.model.name, {}))


def check_model(cfg: Config, options: bool = True) -> None:
    """That ``build_model`` can build ``cfg``'s model (a deep model's name and, with ``options``, the
    settings of ``model.options``: a new run's) before any work: a RamerError saying what to write
    instead. A run read back is not held to ``options``: the package another model's settings were
    for may be gone, and this model never reads them."""
    if options:
        check_options(cfg)
    name = cfg.model.name
    if name not in BUILDERS and not _load_installed(name):
        if name in PRESETS:  # the --model form, written as model.name in a config file
            raise RamerError(
                f"model.name '{name}' is a preset of --model; in a config write model.name: ramer and "
                f"model.ablations: [{PRESETS[name]}]"
            )
        if name in CLASSICAL:
            raise RamerError(f"model '{name}' is a scikit-learn baseline: ramer.train.run_training fits it, unbuilt")
        raise UnknownModel(f"unknown model '{name}'; {nearest_model(name)}known: {known_models()}")


def build_model(cfg: Config, spec: DataSpec) -> nn.Module:
    """The deep model ``cfg.model.name`` (a name of this package, a preset, or a registered or
    installed model) built for ``spec`` (``DataSpec.from_bundle(bundle, task)``): an ``nn.Module``
    with a ``loss`` method, untrained; ``ramer.load`` gives a trained one."""
    if not isinstance(cfg, Config):
        raise RamerError(
            "build_model takes a ramer.config.Config (build_config(FILE, ['key=value', ...])), "
            f"not {type(cfg).__name__}"
        )
    check_model(cfg, options=False)
    if not isinstance(spec, DataSpec):
        raise RamerError(
            f"build_model takes a DataSpec (DataSpec.from_bundle(bundle, task)), not {type(spec).__name__}"
        )
    name = cfg.model.name
    if name in OWN:
        _not_shadowed(name)
        model = BUILDERS[name](cfg, spec)
    else:
        try:
            model = BUILDERS[name](cfg, spec)
        except RamerError:
            raise
        except Exception as e:  # another package's builder: say whose, and where it raised
            frame = traceback.extract_tb(e.__traceback__)[-1]
            raise RamerError(
                f"model '{name}': its builder raised {type(e).__name__}: {first_line(e)} "
                f"({frame.filename}, line {frame.lineno})"
            ) from e
    if not isinstance(model, nn.Module):
        raise RamerError(f"model '{name}': its builder returned a {type(model).__name__}, not a torch.nn.Module")
    if not callable(getattr(model, "loss", None)):
        raise RamerError(
            f"model '{name}': {type(model).__name__} has no loss(out, batch) method returning a "
            "ramer.models.base.LossResult (docs/ARCHITECTURE.md, 'Adding a model')"
        )
    for part in modality_encoders(model):  # train.recompute reaches every RAMer-style modality encoder
        part.recompute = cfg.train.recompute
    return model


def meta_model(cfg: Config, spec: DataSpec) -> nn.Module:
    """``build_model`` on PyTorch's meta device: the model's structure (names, shapes, parts) without
    memory for its weights. A meta tensor holds no values, so the initialisation of the weights is
    skipped (``SkipInit``), and nothing is drawn from the global random generator (unless a builder
    draws on the CPU on purpose: none of ramer's models does). The state is not saved and put back,
    which would undo what another thread drew meanwhile."""
    with torch.device("meta"), SkipInit():
        return build_model(cfg, spec)


class SkipInit(TorchFunctionMode):
    """Within it (on the meta device, in ``meta_model``), ``torch.nn.init``'s initialisers and the tensor
    methods that fill a tensor with random numbers return the tensor as it is, and a product,
    ``torch.randn``, ``torch.rand`` or ``torch.eye`` an empty tensor of the shape and type it would
    have. PyTorch computes these on meta tensors with its reference implementations, which import its
    compiler (``torch._dynamo``): 1 to 2 s the first time in a process, and process-wide settings (an
    environment variable, a warnings filter). Only where every tensor given is a meta one and no other
    device is asked for: a tensor a builder puts on the CPU on purpose (``torch.ones(3, device="cpu")
    * 2``) is computed. Other operations run as they are (a plugin model's may import the compiler:
    only the time is lost)."""

    FILLS = ("normal_", "uniform_", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_", "random_")
    KEPT = frozenset(
        [
            *(getattr(torch.Tensor, n) for n in FILLS),
            *(f for n, f in vars(nn.init).items() if callable(f) and n.endswith("_") and not n.startswith("_")),
        ]
    )
    PRODUCTS = frozenset([torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [x for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)]
        if not all(x.is_meta for x in tensors) or str(kwargs.get("device", "meta")) != "meta":
            return func(*args, **kwargs)  # a tensor the builder put elsewhere on purpose: computed
        if func in self.KEPT:
            return args[0] if args else kwargs["tensor"]
        if func in self.PRODUCTS and len(args) == 2 and not kwargs:
            shapes = [x.shape if isinstance(x, torch.Tensor) else () for x in args]
            return torch.empty(torch.broadcast_shapes(*shapes), dtype=torch.result_type(*args))
        if func in (torch.randn, torch.rand):  # a generator of the CPU's draws on it
            return torch.empty(*args, **{k: v for k, v in kwargs.items() if k != "generator"})
        if func is torch.eye and args:
            return torch.empty(args[0], args[1] if len(args) > 1 else args[0], **kwargs)
        return func(*args, **kwargs)


__all__ = [
    "BASELINES",
    "BUILDERS",
    "CLASSICAL",
    "KNOWN",
    "PRESETS",
    "DataSpec",
    "LossResult",
    "build_model",
    "check_model",
    "check_options",
    "model_options",
    "is_known",
    "known_models",
    "nearest_model",
    "meta_model",
    "register_model",
    "set_model",
    "UnknownModel",
]
