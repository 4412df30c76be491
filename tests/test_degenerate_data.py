"""Legal but odd data: what training says of inputs the deep models cannot read, of a validation split
that cannot choose anything, and of a loss that is not finite before any update."""

import io

import numpy as np
import pytest
import torch
from conftest import random_store
from rich.console import Console

from ramer.config import build_config
from ramer.data.store import DataBundle, SceneStore
from ramer.errors import LossNotFinite
from ramer.models import DataSpec, build_model
from ramer.train import inputs, run_training

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["train.epochs=1", "model.hidden=16", "model.ffn=32", "model.heads=2", "train.batch_size=16"]
FIELDS = (
    "text audio visual present token_offsets grid labels target role person_offsets character label_names ids "
    "personality personality_present"
).split()


def changed(store: SceneStore, **arrays) -> SceneStore:
    return SceneStore(**{**{k: getattr(store, k) for k in FIELDS}, **arrays})


def scaled(store: SceneStore, factor: float) -> SceneStore:
    """Every feature and personality value times ``factor`` (float32, as a user's file holds them)."""
    return changed(
        store,
        **{k: (np.asarray(getattr(store, k)) * factor).astype(np.float32) for k in ("text", "audio", "visual")},
        personality=(np.asarray(store.personality) * factor).astype(np.float32),
    )


def bundle_of(train: SceneStore, valid: SceneStore | None = None) -> DataBundle:
    valid = valid or random_store(n=8, seed=1)
    return DataBundle(
        {"train": train, "valid": valid, "test": random_store(n=8, seed=2)}, train.label_names, "odd", "odd"
    )


def train(tmp_path, bundle: DataBundle, model: str = "late_fusion") -> str:
    """Train ``model`` on ``bundle``; what it printed."""
    said = io.StringIO()
    cfg = build_config(None, [*TINY, f"model.name={model}"])
    run_training(cfg, tmp_path / model, bundle=bundle, console=Console(file=said, width=400))
    return said.getvalue()


def notes_of(train_store: SceneStore, model: str = "ramer") -> list[str]:
    cfg = build_config(None, [*TINY, f"model.name={model}"])
    torch.manual_seed(0)
    dims = train_store.dims
    spec = DataSpec({m: dims[m] for m in ("text", "audio", "visual")}, 5, train_store.label_names, dims["personality"])
    built = build_model(cfg, spec)
    return inputs.input_notes(train_store, built, cfg.loss, "odd")


def test_features_far_below_unit_scale_are_noted_as_unread(tmp_path):
    tiny = scaled(random_store(n=16), 1e-8)
    said = train(tmp_path, bundle_of(tiny))
    assert said.count("vary little within a token") == 3, said  # text, audio, visual
    assert "standardise each feature column" in said and "odd: the text features" in said
    # what the note says: at this scale the model's scores are those of all-zero features
    cfg = build_config(None, [*TINY, "model.name=late_fusion"])
    torch.manual_seed(0)
    model = build_model(cfg, DataSpec.from_bundle(bundle_of(tiny))).eval()
    zeros = scaled(tiny, 0.0)
    with torch.no_grad():
        a, b = model(tiny.collate(np.arange(16))).probs, model(zeros.collate(np.arange(16))).probs
    assert torch.allclose(a, b, atol=1e-5)


def test_ordinary_data_gets_no_note(tmp_path):
    assert notes_of(random_store(n=16)) == []
    assert "note:" not in train(tmp_path, bundle_of(random_store(n=16)))


def test_a_feature_of_one_value_is_noted_as_read_for_its_presence_only(tmp_path):
    one = random_store(n=16, dims=(1, 8, 12), personality_dim=1)
    valid = random_store(n=8, dims=(1, 8, 12), personality_dim=1, seed=1)
    test = random_store(n=8, dims=(1, 8, 12), personality_dim=1, seed=2)
    said = train(tmp_path, DataBundle({"train": one, "valid": valid, "test": test}, one.label_names, "odd", "odd"))
    assert "note: odd: the text features have one value per token" in said, said
    notes = notes_of(one)
    assert [n.split(" features ")[0] for n in notes] == ["odd: the text", "odd: the personality"], notes
    assert "reads only whether text is there" in notes[0] and "br, cc and lp read the value" in notes[0]
    constant = changed(random_store(n=16), audio=np.zeros_like(random_store(n=16).audio))
    assert any("audio features repeat one value" in n for n in notes_of(constant, "mult"))


def test_personality_far_from_unit_scale_is_noted_for_ramer_only(tmp_path):
    store = random_store(n=16)
    loud = changed(store, personality=(np.asarray(store.personality) * 50 + 50).astype(np.float32))
    said = train(tmp_path, bundle_of(loud), "ramer")
    assert "note: odd: the personality values are far from unit scale" in said, said
    notes = notes_of(loud)
    assert len(notes) == 1 and "outweighs" in notes[0] and "loss.w_pers 0.1" in notes[0], notes
    assert notes_of(loud, "ramer-authors") == []  # no personality target there
    assert notes_of(loud, "late_fusion") == []  # reads no personality


@pytest.mark.parametrize("model", ["late_fusion", "br"])
def test_valid_without_a_label_is_noted(tmp_path, model):
    valid = random_store(n=8, seed=1)
    valid = changed(valid, labels=np.zeros_like(valid.labels))
    said = train(tmp_path, bundle_of(random_store(n=16), valid), model)
    assert "no sample of the valid split has a label" in said and "threshold 0.5" in said, said


@pytest.mark.parametrize("model", ["late_fusion", "br"])
def test_a_label_no_training_sample_has_is_noted(tmp_path, model):
    """A label only in valid or test (a data set cut so, a label of another corpus) trained without a
    word, and the run cannot learn it: the note names it with its counts in the other splits."""
    store = random_store(n=16)
    labels = np.asarray(store.labels).copy()
    labels[:, 2] = 0
    said = train(tmp_path, bundle_of(changed(store, labels=labels)), model)
    valid, test = (int(np.asarray(random_store(n=8, seed=k).labels)[:, 2].sum()) for k in (1, 2))
    name = store.label_names[2]
    line = f"note: odd: label {name!r} (valid {valid}, test {test}) has no sample in the train split: the run cannot"
    assert f"{line} learn it" in said, said
    assert "no sample in the train split" not in train(tmp_path / "plain", bundle_of(store), model)
    labels[:, 3] = 0
    notes = inputs.bench_notes(bundle_of(changed(store, labels=labels)), [], "multi_label")
    assert len(notes) == 1 and notes[0].startswith(f"odd: labels {name!r} (valid {valid}, test {test}), "), notes
    alone = DataBundle({"train": changed(store, labels=labels)}, store.label_names, "odd", "odd")  # no other split
    assert inputs.untrained_note(alone).startswith(f"odd: labels {name!r}, {store.label_names[3]!r} have no sample")


@pytest.mark.parametrize("model", ["late_fusion", "br"])
def test_a_modality_no_training_token_has_is_noted(tmp_path, model):
    """No face in any training scene but faces in valid and test: the run's model scored visual
    there with an encoder that never trained, without a word. The note names the modality and its
    share of each other split's tokens; a modality absent everywhere, or present in train, has none."""
    store = random_store(n=16)
    present = store.present.copy()
    present[:, 2] = False
    blind = changed(store, present=present, visual=store.visual * present[:, 2:])
    bundle = bundle_of(blind)
    valid, test = (f"{100 * bundle.splits[s].present[:, 2].mean():.0f} %" for s in ("valid", "test"))
    line = f"note: odd: visual is present at no token of the train split (valid {valid}, test {test} of tokens)"
    said = train(tmp_path, bundle, model)
    assert f"{line}: the run cannot learn it, and its model scores visual there with weights that never" in said, said
    assert said.count("present at no token of the train split") == 1, said
    noted = [row.removeprefix("note: ") for row in said.splitlines() if row.startswith(line)]
    assert inputs.bench_notes(bundle, [], "multi_label") == noted  # bench and tune say it once, before their runs
    nowhere = {s: changed(st, present=st.present & [True, True, False]) for s, st in bundle.splits.items()}
    assert inputs.unseen_modality_notes(DataBundle(nowhere, store.label_names, "odd", "odd")) == []
    assert "present at no token" not in train(tmp_path / "plain", bundle_of(store), model)


def test_a_loss_not_finite_before_any_update_names_the_features_not_the_learning_rate(tmp_path):
    huge = scaled(random_store(n=16), 1e30)
    with pytest.raises(LossNotFinite) as e:
        train(tmp_path, bundle_of(huge))
    said = str(e.value)
    assert said.startswith("epoch 1 step 0: loss is not finite (nan)") and "train.lr?" not in said, said
    assert "before any update" in said and "largest feature magnitudes are text " in said and "e+30" in said
    assert "rescale the features" in said
    batch = random_store(n=4).collate(np.arange(4))
    assert inputs.loss_not_finite(1, 0, float("nan"), batch).endswith(")")  # ordinary features: no remedy named
    assert "before any update" in inputs.loss_not_finite(1, 0, float("nan"), batch)
    assert inputs.loss_not_finite(2, 0, float("nan"), batch).endswith("lower train.lr?")  # after updates: the lr may be
    assert inputs.loss_not_finite(1, 3, float("nan"), batch).endswith("lower train.lr?")


def test_bench_and_tune_say_the_notes_their_quiet_runs_do_not(tmp_path, capsys):
    """The runs of a bench and the trials of a search train with a quiet console: the notes on what
    the data lets a model not read are said once, by the command."""
    from ramer.cli import main

    pytest.importorskip("optuna")
    data = tmp_path / "tiny"
    bundle_of(scaled(random_store(n=16), 1e-8)).save(data)
    sets = [x for s in [*TINY, "train.threads=1"] for x in ("--set", s)]
    argv = ["bench", "--data", str(data), "--models", "br,late_fusion,ramer", "--seeds", "1", "--missing-rates", "0"]
    assert main([*argv, "--complete", "", "--jobs", "1", *sets, "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert err.count("vary little within a token") == 3, err  # text, audio, visual: once, not once per model
    assert err.count("the personality values are far from unit scale") == 0, err
    argv = ["tune", "--model", "late_fusion", "--data", str(data), "--trials", "1", "--out", str(tmp_path / "t")]
    assert main([*argv, *sets]) == 0
    assert capsys.readouterr().err.count("vary little within a token") == 3


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_data_without_a_valid_split_is_one_line_before_any_note(tmp_path, capsys, command):
    """The notes read the valid and train splits before the runs check them: a dataset without a
    valid split gave a KeyError traceback from bench and tune, where it was one line."""
    from ramer.cli import main

    if command == "tune":
        pytest.importorskip("optuna")
    splits = {"train": random_store(n=16), "test": random_store(n=8, seed=2)}
    DataBundle(splits, splits["train"].label_names, "odd", "odd").save(tmp_path / "novalid")
    sets = [x for s in [*TINY, "train.threads=1"] for x in ("--set", s)]
    argv = [command, "--data", str(tmp_path / "novalid"), "--out", str(tmp_path / "out"), *sets]
    argv += (
        ["--models", "late_fusion", "--seeds", "1", "--missing-rates", "0", "--complete", "", "--jobs", "1"]
        if (command == "bench")
        else ["--model", "late_fusion", "--trials", "1"]
    )
    assert main(argv) == 2
    assert "no 'valid' split" in capsys.readouterr().err


def test_data_info_marks_a_label_no_training_sample_has():
    """`ramer data info` showed a label's zero train count without a word, though no run can learn it."""
    from ramer.data.info import dataset_info, format_info_table

    store = random_store(n=16)
    labels = np.asarray(store.labels).copy()
    labels[:, 2] = 0
    rows = format_info_table(dataset_info(bundle_of(changed(store, labels=labels)))).splitlines()
    marked = [row.split()[0] for row in rows if row.endswith("no train sample: a run cannot learn it")]
    assert marked == [store.label_names[2]], rows
    alone = DataBundle({"test": random_store(n=8, seed=2)}, store.label_names, "odd", "odd")  # no train split
    assert "no train sample" not in format_info_table(dataset_info(alone))
