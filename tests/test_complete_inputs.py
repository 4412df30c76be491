"""Complete inputs of the embedded benchmark (``data.synthetic.complete``): the same scenes with every
modality present for every person at every segment, and the rules around them."""

import json

import numpy as np
import pytest

from ramer.cli import main
from ramer.config import SynthConfig, build_config
from ramer.data import complete_data, load_bundle
from ramer.data.synthetic import generate
from ramer.errors import RamerError
from ramer.train.recipe import Recipe

SMALL = dict(n_train=60, n_valid=30, n_test=40, seed=3)
SAME = (
    "grid",
    "token_offsets",
    "person_offsets",
    "labels",
    "target",
    "role",
    "character",
    "personality",
    "personality_present",
)


@pytest.mark.parametrize("missing_rate", [0.0, 0.4])
def test_complete_bundle_has_the_same_scenes_with_every_modality(missing_rate):
    normal = generate(SynthConfig(**SMALL, missing_rate=missing_rate))
    complete = generate(SynthConfig(**SMALL, missing_rate=missing_rate, complete=True))
    assert normal.info["oracle"] == complete.info["oracle"]
    for split, a in normal.splits.items():
        b = complete.splits[split]
        for name in SAME:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{split} {name}")
        assert a.ids == b.ids and a.label_names == b.label_names
        np.testing.assert_array_equal(a.extra["oracle"], b.extra["oracle"])
        # Every token of every scene has every modality (the generator's missing rate hides nothing).
        assert b.present.shape == a.present.shape and b.present.all()
        assert not a.present.all()  # non-speakers lack text and audio in the normal bundle
        for k, m in enumerate(("text", "audio", "visual")):
            fa, fb = getattr(a, m), getattr(b, m)
            seen = a.present[:, k]
            # Equal wherever the normal bundle has the modality; zero there only where it is hidden.
            np.testing.assert_array_equal(fa[seen], fb[seen], err_msg=f"{split} {m}")
            assert not fa[~seen].any() and (np.abs(fb[~seen]).sum(1) > 0).all(), (split, m)


def test_complete_inputs_keep_the_targets_role():
    """role stays the target's speaker / non-speaker role, though the target now has text and audio."""
    complete = generate(SynthConfig(**SMALL, complete=True))
    test = complete.splits["test"]
    assert set(np.unique(test.role)) == {0, 1}
    assert (test.role == generate(SynthConfig(**SMALL)).splits["test"].role).all()


def test_complete_inputs_take_no_extra_missing_rate(tmp_path):
    cfg = build_config(overrides=["data.synthetic.complete=true", "data.missing_rate=0.3"])
    with pytest.raises(
        RamerError,
        match="data.synthetic.complete: complete inputs hide nothing, but data.missing_rate is 0.3; set it to 0",
    ):
        load_bundle(cfg.data)
    # A recipe given the data directly checks it too (where the extra missing rate is applied).
    bundle = generate(SynthConfig(**SMALL, complete=True))
    cfg = build_config(overrides=["data.synthetic.complete=true", "data.missing_rate=0.3", "model.name=late_fusion"])
    with pytest.raises(RamerError, match="complete inputs hide nothing"):
        Recipe(cfg, tmp_path / "run", bundle=bundle).setup()
    path = build_config(overrides=["data.synthetic.complete=true", f"data.path={tmp_path}"])
    with pytest.raises(RamerError, match="data.synthetic.complete is for the embedded benchmark; data.path is set"):
        load_bundle(path.data)
    fixed = complete_data(cfg.data)
    assert fixed.synthetic.complete and fixed.missing_rate == 0.0 and cfg.data.missing_rate == 0.3


@pytest.mark.slow
def test_demo_adds_the_complete_input_reference(tmp_path, capsys):
    sets = [
        "data.synthetic.n_train=64",
        "data.synthetic.n_valid=32",
        "data.synthetic.n_test=40",
        "train.epochs=1",
        "train.batch_size=32",
        "model.hidden=16",
        "model.ffn=32",
        "model.heads=2",
        "model.queue_size=64",
    ]
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *sum((["--set", s] for s in sets), [])]) == 0
    text = capsys.readouterr().out
    assert "ramer, complete inputs (reference)" in text and "oracle (sees the latent state)" in text
    cfg = build_config(out / "ramer-complete" / "config.yaml")
    assert cfg.model.name == "ramer" and cfg.data.synthetic.complete and cfg.data.missing_rate == 0.0
    assert not build_config(out / "ramer" / "config.yaml").data.synthetic.complete
    reference = json.loads((out / "ramer-complete" / "test_metrics.json").read_text())
    plain = json.loads((out / "ramer" / "test_metrics.json").read_text())
    # The same test targets, speaker and non-speaker alike; the scores differ (other inputs).
    assert [reference[p]["n"] for p in ("overall", "speaker", "nonspeaker")] == [
        plain[p]["n"] for p in ("overall", "speaker", "nonspeaker")
    ]
    assert reference["overall"] != plain["overall"]
    row = next(ln for ln in text.splitlines() if "ramer, complete inputs" in ln)
    assert f"{reference['overall']['micro_f1']:.4f}" in row
