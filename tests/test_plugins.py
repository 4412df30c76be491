"""Models of other packages: the example of docs/ARCHITECTURE.md ("Adding a model"), installed as an
entry point of the group ``ramer.models``, trains, tests and is read back through the CLI, in this
process and in a new one; ``register_model`` serves one process; bad names, builders, spaces and
plugins are errors that name them."""

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from importlib import import_module
from pathlib import Path

import pytest
import torch
from torch import nn

import ramer
from ramer import models
from ramer.cli import main
from ramer.config import build_config, with_values
from ramer.errors import RamerError
from ramer.models import build_model, is_known, known_models, register_model, set_model, spaces
from ramer.models.base import DataSpec
from ramer.models.spaces import Param, log, space_for
from ramer.train import run_training

DOC = Path(__file__).parents[1] / "docs" / "ARCHITECTURE.md"
SRC = str(Path(ramer.__file__).parents[1])  # this checkout's package, for the subprocess
TINY = [
    *("data.synthetic.n_train=48", "data.synthetic.n_valid=24", "data.synthetic.n_test=24", "train.epochs=2"),
    *("model.hidden=16", "model.ffn=32", "model.heads=2", "train.batch_size=16", "train.threads=1"),
]
SETS = [x for s in TINY for x in ("--set", s)]
SPEC = DataSpec(dims={"text": 4, "audio": 3, "visual": 2}, n_labels=3, label_names=("a", "b", "c"))


def doc_blocks() -> list[str]:
    """The Python blocks of the section "Adding a model" in docs/ARCHITECTURE.md (indented ones
    dedented)."""
    section = DOC.read_text().split("## Adding a model", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b.split("```", 1)[0]) for b in section.split("```python\n")[1:]]


def doc_example() -> str:
    """The model file of the section: its first block."""
    return doc_blocks()[0]


@pytest.fixture
def registry(monkeypatch, request):
    """The model registry and the search spaces as they were, after the test; the test's modules
    forgotten."""
    monkeypatch.setattr(models, "BUILDERS", dict(models.BUILDERS))
    monkeypatch.setattr(models, "KNOWN", set(models.KNOWN))
    monkeypatch.setattr(spaces, "SPACES", dict(spaces.SPACES))
    before = set(sys.modules)
    request.addfinalizer(lambda: [sys.modules.pop(m) for m in set(sys.modules) - before if m.startswith("plug_")])


def install(site: Path, monkeypatch, files: dict[str, str], entries: dict[str, str], dist: str = "my-models") -> None:
    """A distribution in ``site`` as pip installs one: its modules and ``entries`` (model name ->
    ``module:builder``) in the entry-point group ``ramer.models``; ``site`` put on ``sys.path``."""
    site.mkdir(exist_ok=True)
    for name, code in files.items():
        (site / name).write_text(code)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ramer.models]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    monkeypatch.syspath_prepend(str(site))


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_documented_model_installed_as_a_plugin_runs_through_the_cli(tmp_path, monkeypatch, registry, capsys):
    site = tmp_path / "site"
    install(site, monkeypatch, {"plug_models.py": doc_example()}, {"scope_pool": "plug_models:build"})
    run = tmp_path / "run"
    assert main(["train", "--model", "scope_pool", "--out", str(run), *SETS]) == 0
    assert build_config(run / "config.yaml").model.name == "scope_pool"
    log_lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in log_lines if "epoch" in x] == [1, 2]
    assert "cls" in log_lines[0]["train"]  # the plugin's own loss terms are logged
    test = json.loads((run / "test_metrics.json").read_text())

    predictor = ramer.load(run)
    assert type(predictor.model).__name__ == "ScopePool" and type(predictor.model).__module__ == "plug_models"
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"] == test["overall"]
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(run), "--out", str(preds)]) == 0
    assert len(preds.read_text().splitlines()) == 24  # every test scene

    # A new process finds it by the run's config alone (as bench's spawned workers and torchrun do).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), SRC])}
    argv = [sys.executable, "-m", "ramer", "eval", str(run), "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["overall"] == test["overall"]


def test_bench_and_tune_take_an_installed_model(tmp_path, monkeypatch, registry):
    from ramer.bench import parse_models

    install(tmp_path / "site", monkeypatch, {"plug_models.py": doc_example()}, {"scope_pool": "plug_models:build"})
    assert parse_models("scope_pool,late_fusion") == ["scope_pool", "late_fusion"]
    cfg = build_config(None)
    set_model(cfg, "scope_pool")
    assert space_for(cfg) == spaces.COMMON  # a model without a space of its own searches the common one
    assert isinstance(build_model(cfg, SPEC), nn.Module)


def test_an_installed_model_that_registers_itself_on_import_keeps_its_space(tmp_path, monkeypatch, registry):
    code = doc_example() + textwrap.dedent(
        """
        from ramer.models import register_model
        from ramer.models.spaces import log

        SPACE = (log("train.lr", 1e-3, 1e-2),)
        register_model("spaced", build, space=SPACE)
        """
    )
    install(tmp_path / "site", monkeypatch, {"plug_spaced.py": code}, {"spaced": "plug_spaced:build"})
    cfg = build_config(None)
    set_model(cfg, "spaced")
    assert space_for(cfg) == sys.modules["plug_spaced"].SPACE
    module = importlib.reload(sys.modules["plug_spaced"])  # a notebook's reload: its builder again, replaced
    assert models.BUILDERS["spaced"] is module.build and space_for(cfg) == module.SPACE
    for other in (lambda cfg, spec: nn.Linear(1, 1), functools.partial(module.build)):  # other builders
        with pytest.raises(RamerError, match="model name 'spaced' is taken"):
            register_model("spaced", other)


def test_a_bench_worker_tunes_an_installed_model_in_its_own_space(tmp_path, monkeypatch, registry):
    """``bench --tune-trials --jobs 2`` tunes each model in a process of its own: there too the
    installed model is imported before its space is read (else the common space was searched)."""
    code = doc_example() + textwrap.dedent(
        """
        from ramer.models import register_model
        from ramer.models.spaces import log

        register_model("spaced", build, space=(log("train.lr", 1e-3, 1e-2),))
        """
    )
    install(tmp_path / "site", monkeypatch, {"plug_spaced.py": code}, {"spaced": "plug_spaced:build"})
    bench = ["bench", "--seeds", "1", "--missing-rates", "0", "--complete", "", "--jobs", "2", *SETS]
    assert main([*bench, "--models", "spaced,late_fusion", "--tune-trials", "1", "--out", str(tmp_path / "b")]) == 0
    searched = json.loads((tmp_path / "b" / "tune" / "spaced" / "tune.json").read_text())["space"]
    assert [p.split(" ")[0] for p in searched] == ["train.lr"], searched


def test_the_documented_python_registration_runs(tmp_path, monkeypatch, registry):
    """The section's second block as written, beside the first as ``my_models.py``, with this
    test's tiny settings and folder."""
    (tmp_path / "my_models.py").write_text(doc_example())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_models", raising=False)
    code = doc_blocks()[1]
    assert '["train.epochs=3"]' in code and '"runs/scope_pool"' in code
    exec(code.replace('["train.epochs=3"]', repr(TINY)).replace('"runs/scope_pool"', repr(str(tmp_path / "r"))), {})
    sys.modules.pop("my_models", None)
    assert build_config(tmp_path / "r" / "config.yaml").model.name == "scope_pool"
    assert (tmp_path / "r" / "test_metrics.json").is_file()


def test_register_model_serves_this_process_with_its_search_space(tmp_path, registry):
    example = tmp_path / "plug_example.py"
    example.write_text(doc_example())
    module = import_file(example, "plug_example")
    space = (log("train.lr", 1e-3, 1e-2), Param("model.hidden", choices=(8, 16)))
    register_model("scope_pool", module.build, space=space)
    register_model("scope_pool", module.build, space=space)  # the same builder again: no error
    cfg = build_config(None, TINY)
    set_model(cfg, "scope_pool")
    assert space_for(cfg) == space
    run_training(cfg, tmp_path / "run")
    assert type(ramer.load(tmp_path / "run").model) is module.ScopePool
    reloaded = import_file(example, "plug_example")  # a notebook cell run again: a new builder replaces it
    register_model("scope_pool", reloaded.build)
    assert models.BUILDERS["scope_pool"] is reloaded.build and space_for(cfg) == spaces.COMMON
    with pytest.raises(RamerError, match="model name 'late_fusion' is taken"):
        register_model("late_fusion", reloaded.build)
    register_model("scope_pool", reloaded.build, space=space)
    with pytest.raises(RamerError, match="search space"):  # a refused new registration changes nothing
        register_model("scope_pool", module.build, space=("not a Param",))
    assert models.BUILDERS["scope_pool"] is reloaded.build and space_for(cfg) == space
    del models.BUILDERS["scope_pool"]  # as in a process that never registered it
    models.KNOWN.discard("scope_pool")
    with pytest.raises(RamerError, match=f"{tmp_path / 'run' / 'model.safetensors'}: unknown model 'scope_pool'"):
        ramer.load(tmp_path / "run")


def test_a_models_own_settings_reach_its_builder_and_its_runs(tmp_path, monkeypatch, registry, capsys):
    """``model.options.scope_pool.pool`` (the doc example's own setting) reaches its builder, is kept in
    the run's config and read back with it; a run of another model may carry it (bench's shared
    --set); the builder's own check of a bad value is one line."""
    install(tmp_path / "site", monkeypatch, {"plug_models.py": doc_example()}, {"scope_pool": "plug_models:build"})
    run = tmp_path / "run"
    assert (
        main(["train", "--model", "scope_pool", "--out", str(run), *SETS, "--set", "model.options.scope_pool.pool=max"])
        == 0
    )
    assert build_config(run / "config.yaml").model.options == {"scope_pool": {"pool": "max"}}
    assert ramer.load(run).model.pool == "max"
    cfg = build_config(None, ["model.options.scope_pool.pool=max"])
    set_model(cfg, "late_fusion")
    assert isinstance(build_model(cfg, SPEC), nn.Module)  # another model's settings: not read, not refused
    set_model(cfg, "scope_pool")
    assert build_model(cfg, SPEC).pool == "max"
    cfg.model.options = {}
    assert build_model(cfg, SPEC).pool == "mean"  # the model's own default

    capsys.readouterr()
    bad = ["train", "--model", "scope_pool", "--out", str(tmp_path / "bad"), *SETS]
    assert main([*bad, "--set", "model.options.scope_pool.pool=median"]) == 2
    err = capsys.readouterr().err
    said = "error: model 'scope_pool': its builder raised ValueError: model.options.scope_pool.pool is mean or max"
    assert re.search(re.escape(said) + r", not 'median' \(.*plug_models.py, line \d+\)", err), err
    assert main([*bad, "--set", "model.options.scope_pool.pooll=max"]) == 2  # a typo: not the default unsaid
    said = "its builder raised ValueError: model.options.scope_pool has no key pooll; its key is pool"
    assert said in capsys.readouterr().err

    space = (Param("model.options.scope_pool.pool", choices=("mean", "max")),)
    register_model("scope_pool", sys.modules["plug_models"].build, space=space)  # a searched setting of its own
    tried = with_values(build_config(None), {space[0].key: "max"}, "a trial")
    assert space[0].value(tried) == "max" and tried.model.options == {"scope_pool": {"pool": "max"}}


def test_a_run_carrying_settings_of_a_model_gone_since_still_loads(tmp_path, registry):
    """Another model's settings are checked when a run starts, not when it is read back: the
    package they were for may be uninstalled, and this run's model never reads them."""
    register_model("zz_plug", lambda cfg, spec: nn.Linear(1, 1))
    cfg = build_config(None, [*TINY, "model.options.zz_plug.a=1"])
    set_model(cfg, "late_fusion")
    run_training(cfg, tmp_path / "run")
    del models.BUILDERS["zz_plug"]
    models.KNOWN.discard("zz_plug")
    assert type(ramer.load(tmp_path / "run").model).__name__ == "LateFusion"
    with pytest.raises(RamerError, match="model.options.zz_plug: no model 'zz_plug'"):
        run_training(cfg, tmp_path / "again")  # a new run with them: refused
    with pytest.raises(RamerError, match="model.options.scope_pool.pool: not set in this config"):
        Param("model.options.scope_pool.pool", choices=("mean", "max")).value(build_config(None))


@pytest.mark.parametrize(
    "name, message",
    [
        (
            "late_fusion",
            "model.options.late_fusion: 'late_fusion' is ramer's own model, whose settings are the keys of model",
        ),
        ("br", "model.options.br: 'br' is ramer's own model"),
        ("ramer-no_shuffle", "model.options.ramer-no_shuffle: 'ramer-no_shuffle' is ramer's own model"),
        ("nosuch", "model.options.nosuch: no model 'nosuch' is registered or installed; known: "),
    ],
)
def test_settings_for_ramers_own_or_an_unknown_model_are_refused_before_any_work(
    name, message, tmp_path, registry, capsys
):
    cfg = build_config(None, [f"model.options.{name}.x=1"])
    with pytest.raises(RamerError, match=re.escape(message)):
        models.check_model(cfg)
    for model in ("late_fusion", "br"):  # the deep recipe and the classical fit
        run = tmp_path / model
        assert main(["train", "--model", model, "--out", str(run), *SETS, "--set", f"model.options.{name}.x=1"]) == 2
        assert message in capsys.readouterr().err and not run.exists()


@pytest.mark.parametrize(
    "name, builder, space, message",
    [
        ("ramer", None, None, "model name 'ramer' is taken"),
        ("br", None, None, "model name 'br' is taken"),
        ("ramer-mine", None, None, "names 'ramer-<part>' are RAMer's ablation presets"),
        ("a/b", None, None, "model name 'a/b': letters, digits and '_'"),
        ("", None, None, "model name '': letters"),
        ("mine", "build", None, "the builder must be callable"),
        ("mine", None, (Param("model.nope", 0.0, 1.0),), "search space model.nope uniform .*unknown key 'model.nope'"),
        ("mine", None, (log("train.lr", -1.0, 1.0),), "search space train.lr .*greater than 0"),
        ("mine", None, ("train.lr",), "holds 'train.lr', not a ramer.models.spaces.Param"),
        (
            "mine",
            None,
            (log("train.lr", 1e-4, 1e-2), Param("train.lr", 1e-3, 1e-2)),
            r"model 'mine': its search space gives train.lr twice; give each key once",
        ),
        (
            "mine",
            None,
            (Param("model.options.theirs.pool", choices=("mean", "max")),),
            r"holds model.options.theirs.pool, a setting of model 'theirs', which 'mine' never reads; its own are "
            r"model.options.mine.\*",
        ),
        ("mine", lambda cfg: None, None, r"model 'mine': the builder <lambda>\(cfg\) must take \(cfg, spec\)"),
    ],
)
def test_register_model_refuses(name, builder, space, message, registry):
    before = (dict(models.BUILDERS), set(models.KNOWN), dict(spaces.SPACES))
    with pytest.raises(RamerError, match=message):
        register_model(name, builder or (lambda cfg, spec: nn.Linear(1, 1)), space=space)
    assert (models.BUILDERS, models.KNOWN, spaces.SPACES) == before


def test_a_broken_or_doubly_installed_plugin_is_named(tmp_path, monkeypatch, registry):
    files = {
        "plug_broken.py": "import plug_not_there\n",
        "plug_other.py": "def build(cfg, spec):\n    return 'not a module'\n",
    }
    install(tmp_path / "site", monkeypatch, files, {"broken": "plug_broken:build", "other": "plug_other:build"})
    install(tmp_path / "site", monkeypatch, {}, {"twice": "plug_other:build"}, dist="first")
    install(tmp_path / "site", monkeypatch, {}, {"twice": "plug_other:build"}, dist="second")
    assert "broken" in known_models() and "plug_broken" not in sys.modules  # listed, not imported
    cfg = build_config(None)
    with pytest.raises(
        RamerError,
        match=r"model 'broken' \(plug_broken:build, from my-models\) failed to load: "
        r"ModuleNotFoundError: No module named 'plug_not_there'",
    ):
        set_model(cfg, "broken")
    with pytest.raises(RamerError, match="model 'twice' is installed twice: plug_other:build, from (first|second); "):
        is_known("twice")
    cfg.model.name = "other"
    with pytest.raises(RamerError, match="model 'other': its builder returned a str, not a torch.nn.Module"):
        build_model(cfg, SPEC)
    with pytest.raises(RamerError, match="unknown model 'nothing'; known: .*broken"):
        set_model(cfg, "nothing")


BROKEN = '''
import torch
from torch import nn

from ramer.models.base import LossResult


class Out:
    def __init__(self, probs):
        self.probs = probs


class Broken(nn.Module):
    """One way of breaking the contract per name: what forward or loss return."""

    def __init__(self, how, spec):
        super().__init__()
        self.how, self.head = how, nn.Linear(spec.dims["text"], spec.n_labels)

    def forward(self, batch):
        logits = self.head(batch.features["text"].mean(1))
        if self.how == "tensor":
            return logits.sigmoid()
        if self.how == "dict":
            return {"probs": logits.sigmoid()}
        if self.how == "shape":
            return Out(logits.sigmoid()[:, :1])
        if self.how == "logits":
            return Out(logits - 5.0)
        if self.how == "nan":
            return Out(logits.sigmoid() * float("nan"))
        if self.how == "nan_in_eval" and not self.training:
            return Out(logits.sigmoid() * float("nan"))
        return Out(logits.sigmoid())

    def loss(self, out, batch):
        probs = out if isinstance(out, torch.Tensor) else out["probs"] if isinstance(out, dict) else out.probs
        probs = probs.nan_to_num(0.5).clamp(1e-6, 1 - 1e-6)
        each = nn.functional.binary_cross_entropy(probs, batch.labels[:, : probs.shape[1]],
                                                  reduction="none").mean(1)
        if self.how == "bare_loss":
            return each.mean()
        if self.how == "per_sample":
            return LossResult(total=each, terms={})
        if self.how == "vector_term":
            return LossResult(total=each.mean(), terms={"each": each.detach()})
        if self.how == "loss_term":
            return LossResult(total=each.mean(), terms={"loss": each.mean().detach()})
        if self.how == "no_grad":
            return LossResult(total=each.mean().detach(), terms={})
        return LossResult(total=each.mean(), terms={})


class NoLoss(nn.Linear):
    def __init__(self, spec):
        super().__init__(1, 1)


def build(how):
    return lambda cfg, spec: NoLoss(spec) if how == "no_loss" else Broken(how, spec)


def raises(cfg, spec):
    raise ValueError("hidden must be even")
'''


@pytest.mark.parametrize(
    "how, message",
    [
        ("tensor", "model Broken: forward returned a Tensor without a probs field; expected an object whose probs"),
        ("dict", "model Broken: forward returned a dict without a probs field"),
        ("shape", r"model Broken: forward returned probs of shape \(24, 1\) for a batch of 24 samples and 9 labels"),
        ("logits", r"model Broken: \d+ of \d+ scores of a batch lie outside \[0, 1\] \(e.g. -\d"),
        ("nan", r"model Broken: \d+ of \d+ scores are NaN or infinite \(did the model diverge\?\)"),
        (
            "nan_in_eval",
            r"lower train.lr\? \(or model Broken, of package plug_broken_models, makes NaN or infinite probs",
        ),
        ("bare_loss", r"model Broken: loss\(\) returned a Tensor; expected a ramer.models.base.LossResult"),
        ("per_sample", r"model Broken: LossResult.total must be a scalar tensor \(one number\), got shape \(16,\)"),
        ("vector_term", r"model Broken: LossResult.terms\['each'\] must be a scalar \(one number\), got shape \(16,\)"),
        ("loss_term", "model Broken: LossResult.terms key 'loss': a name other than 'loss' .the logged total."),
        ("no_grad", r"model Broken: LossResult.total has no gradient \(requires_grad is False\)"),
        ("no_loss", r"model 'broken': NoLoss has no loss\(out, batch\) method"),
    ],
)
def test_a_model_breaking_the_contract_is_told_how(how, message, tmp_path, monkeypatch, registry, capsys):
    """Each breach is one line naming the model and the field (it was an AttributeError, a
    RuntimeError deep in the recipe, or a run that finished on logits read as probabilities)."""
    site = tmp_path / "site"
    code = BROKEN + f"\nbuild_{how} = build({how!r})\n"
    install(site, monkeypatch, {"plug_broken_models.py": code}, {"broken": f"plug_broken_models:build_{how}"})
    assert main(["train", "--model", "broken", "--out", str(tmp_path / "run"), *SETS]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_a_builder_that_raises_is_named_with_where(tmp_path, monkeypatch, registry):
    install(tmp_path / "site", monkeypatch, {"plug_raising.py": BROKEN}, {"raising": "plug_raising:raises"})
    cfg = build_config(None)
    set_model(cfg, "raising")
    with pytest.raises(
        RamerError,
        match=r"model 'raising': its builder raised ValueError: hidden must be even "
        r"\(.*plug_raising.py, line \d+\)",
    ):
        build_model(cfg, SPEC)


def test_an_installed_model_under_a_name_of_ramers_own_is_an_error(tmp_path, monkeypatch, registry):
    """Else `--model late_fusion` would run the built-in one and ignore the installed one unsaid."""
    install(tmp_path / "site", monkeypatch, {"plug_models.py": doc_example()}, {"late_fusion": "plug_models:build"})
    cfg = build_config(None)
    for call in (lambda: set_model(cfg, "late_fusion"), lambda: build_model(cfg, SPEC)):
        cfg.model.name = "late_fusion"
        with pytest.raises(
            RamerError,
            match=r"model 'late_fusion' is ramer's own, and plug_models:build, from "
            r"my-models installs another under that name; rename its entry point",
        ):
            call()
    set_model(cfg, "ramer")  # the other names are unaffected


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_bench_names_the_run_that_failed(jobs, tmp_path, monkeypatch, registry, capsys):
    """A RamerError of one run gets the run in front (from a worker process it came without); a
    bug's traceback is preceded by a line naming the run."""
    code = (
        BROKEN
        + "\nbuild_tensor = build('tensor')\n\ndef build_bug(cfg, spec):\n    return Bug(spec)\n\n"
        + (
            "class Bug(Broken):\n    def __init__(self, spec):\n        super().__init__('fine', spec)\n\n"
            "    def forward(self, batch):\n        return 1 / 0\n"
        )
    )
    install(
        tmp_path / "site",
        monkeypatch,
        {"plug_bench.py": code},
        {"tensor": "plug_bench:build_tensor", "bug": "plug_bench:build_bug"},
    )
    bench = ["bench", "--seeds", "1", "--missing-rates", "0", "--complete", "", "--jobs", jobs, *SETS]
    models = "tensor" if jobs == "1" else "late_fusion,tensor"  # two runs: two worker processes
    assert main([*bench, "--models", models, "--out", str(tmp_path / "b")]) == 2
    run = tmp_path / "b" / "runs" / "tensor" / "missing-0" / "seed-1"
    assert (
        f"error: tensor, missing rate 0, seed 1 ({run}): model Broken: forward returned a Tensor"
        in capsys.readouterr().err
    )
    if jobs == "1":
        with pytest.raises(ZeroDivisionError):
            main([*bench, "--models", "bug", "--out", str(tmp_path / "c")])
        assert "failed: bug, missing rate 0, seed 1 (" in capsys.readouterr().err


def test_weights_that_no_longer_fit_a_plugin_model_name_its_package(tmp_path, monkeypatch, registry):
    """A run of a model of another package, whose code gained a layer since: the error named ramer's
    version as what changed ('written by this ramer version, ... so it was changed since')."""
    (tmp_path / "plug_pool.py").write_text(doc_example())
    grown = doc_example().replace(
        "        self.head = nn.Linear(", "        self.extra = nn.Linear(2, 2)\n        self.head = nn.Linear("
    )
    (tmp_path / "plug_grown.py").write_text(grown)
    monkeypatch.syspath_prepend(str(tmp_path))
    register_model("scope_pool", import_module("plug_pool").build)
    run_training(build_config(None, [*TINY, "model.name=scope_pool"]), tmp_path / "run")
    monkeypatch.setitem(models.BUILDERS, "scope_pool", import_module("plug_grown").build)
    with pytest.raises(RamerError) as e:
        ramer.load(tmp_path / "run")
    assert "weights do not fit the model (missing extra.weight" in str(e.value)
    assert "the model is ScopePool of the package 'plug_grown', not ramer's: its code has changed since" in str(e.value)


def test_a_bench_retrains_only_the_model_whose_own_settings_changed(tmp_path, monkeypatch, registry, capsys):
    """``--set model.options.scope_pool.pool=max`` reaches every run of a bench (its config), but only
    scope_pool reads it: late_fusion's finished run was trained again all the same (a researcher's
    walk, a helper's)."""
    install(tmp_path / "site", monkeypatch, {"plug_models.py": doc_example()}, {"scope_pool": "plug_models:build"})
    bench = ["bench", "--models", "scope_pool,late_fusion", "--seeds", "1", "--missing-rates", "0", "--complete", ""]
    bench += ["--jobs", "1", "--out", str(tmp_path / "b"), *SETS]
    assert main(bench) == 0
    from ramer.bench import run_dir

    model_files = {m: run_dir(tmp_path / "b", m, 0.0, 1) / "model.safetensors" for m in ("scope_pool", "late_fusion")}
    before = {m: f.stat().st_mtime_ns for m, f in model_files.items()}
    assert main([*bench, "--set", "model.options.scope_pool.pool=max"]) == 0
    after = {m: f.stat().st_mtime_ns for m, f in model_files.items()}
    assert after["late_fusion"] == before["late_fusion"] and after["scope_pool"] != before["scope_pool"]
    assert ramer.load(model_files["scope_pool"].parent).model.pool == "max"


class HoldsMore(nn.Module):
    """A plugin's model with tensors its state does not hold."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.register_buffer("scale", torch.full((2,), 3.0), persistent=False)
        self.offset = torch.ones(2)  # a tensor attribute
        self.anchors = [torch.linspace(0, 1, 2)]  # one in a list
        self.temperature = nn.Parameter(torch.ones(1, dtype=torch.float64))  # float64 on purpose

    def loss(self, out, batch):
        raise NotImplementedError


class ListHeld(nn.Module):
    """A plugin's model with a tensor in a list, which no state holds."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.anchors = [torch.linspace(0, 1, 2)]

    def loss(self, out, batch):
        raise NotImplementedError


class ReadsValue(nn.Module):
    """A plugin's model whose builder reads a value of a tensor it makes."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, int(torch.tensor(3).item()))

    def loss(self, out, batch):
        raise NotImplementedError


@pytest.mark.parametrize("model", [HoldsMore, ListHeld, ReadsValue])
def test_a_plugin_model_that_needs_real_values_loads_with_them(model, registry):
    """``ramer.load`` builds a model on the meta device and gives it the file's tensors; a model
    with a tensor no state holds (a non-persistent buffer, a tensor attribute), or whose builder reads
    a value (none on the meta device), is built for real and then given the file's weights."""
    from ramer import api

    register_model("zz_real", lambda cfg, spec: model())
    cfg = build_config(None, TINY)
    set_model(cfg, "zz_real")
    state = {k: torch.randn_like(v) for k, v in model().state_dict().items()}
    loaded = api._built(cfg, SPEC, state, "model.safetensors", None)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    if model is HoldsMore:
        assert torch.equal(loaded.scale, torch.full((2,), 3.0)) and torch.equal(loaded.offset, torch.ones(2))
        assert loaded.temperature.dtype == torch.float64
    if model in (HoldsMore, ListHeld):
        assert torch.equal(loaded.anchors[0], torch.tensor([0.0, 1.0]))


CONTRACT_BREAKERS = """
import torch
from torch import nn
from types import SimpleNamespace
from ramer.batch import MODALITIES
from ramer.models.base import LossResult


class Pool(nn.Module):
    '''Mean of each modality over its present scope tokens, one linear head; ``breach`` breaks one rule.'''

    def __init__(self, spec, breach):
        super().__init__()
        self.breach = breach
        self.head = nn.Linear(sum(spec.dims[m] for m in MODALITIES), spec.n_labels)

    def forward(self, batch):
        pooled = []
        for m in MODALITIES:
            mask = batch.scope if self.breach == "masked" else batch.present[m] & batch.scope
            x = batch.features[m] * mask.unsqueeze(-1) if self.breach == "masked" else batch.features[m].masked_fill(
                ~mask.unsqueeze(-1), 0.0
            )
            count = mask.sum(1, keepdim=True) if self.breach == "patterns" else mask.sum(1, keepdim=True).clamp_min(1)
            pooled.append(x.sum(1) / count)
        z = torch.cat(pooled, -1)
        if self.breach == "batch":
            z = z - z.mean(0)
        logits = self.head(z) + (batch.labels if self.breach == "labels" else 0)
        probs = logits if self.breach == "logits" and not self.training else logits.sigmoid()
        return SimpleNamespace(logits=logits, probs=probs)

    def loss(self, out, batch):
        total = nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels)
        return LossResult(total=total, terms={"cls": total.detach()})


def build(breach):
    return lambda cfg, spec: Pool(spec, breach)
"""


def test_the_contract_check_passes_the_example_and_names_each_breach(tmp_path, monkeypatch, registry):
    """``ramer.models.contract.check`` runs on a model of another package the checks ramer's own pass
    (tests/test_baselines.py): the documented example passes; a model that reads a missing modality's
    features, makes NaN on an empty scope, mixes the samples of a batch, or reads the labels when
    scored fails the check named for it. The caller's random state is left as it was."""
    from ramer.models import contract

    install(tmp_path / "site", monkeypatch, {"plug_models.py": doc_example()}, {"scope_pool": "plug_models:build"})
    state = torch.random.get_rng_state()
    assert contract.check("scope_pool") == contract.CHECKS
    assert torch.equal(torch.random.get_rng_state(), state)
    (tmp_path / "breakers.py").write_text(CONTRACT_BREAKERS)
    module = import_file(tmp_path / "breakers.py", "breakers")
    for breach in contract.CHECKS:
        register_model(f"breaks_{breach}", module.build(breach))
        with pytest.raises(RamerError, match=rf"^model 'breaks_{breach}': check '{breach}' \("):
            contract.check(f"breaks_{breach}")
    register_model("gives_logits", module.build("logits"))  # scoring refuses them: so does the check
    with pytest.raises(RamerError, match=r"^model 'gives_logits': check 'patterns' \(.*outside \[0, 1\]"):
        contract.check("gives_logits")
