"""What a config file and ``--set`` values are read as: YAML aliases are refused (a few hundred
bytes of nested ones expand to billions of values), Python tags stay refused, an error message
never formats a whole given value, and a ``--set`` value for a text field is the text given."""

import re
import subprocess
import sys

import pytest

from ramer.config import build_config, config_from_dict, resolve_config
from ramer.errors import RamerError

# Reads a config in a child process with 1 GiB of address space: a config that expands without
# bound fails there (or runs into the timeout) instead of taking the machine's memory.
READ_IN_A_CHILD = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from ramer.config import build_config
from ramer.errors import RamerError
try:
    build_config(sys.argv[1])
except RamerError as e:
    print(e)
"""


def test_a_config_of_nested_aliases_is_refused_at_once(tmp_path):
    """The "billion laughs": 25 levels of {p: *a, q: *a} given where a list goes."""
    lines = ["a0: &a0 {p: 1, q: 1}"]
    lines += [f"a{i}: &a{i} {{p: *a{i - 1}, q: *a{i - 1}}}" for i in range(1, 26)]
    path = tmp_path / "lol.yaml"
    path.write_text("\n".join([*lines, "model: {ablations: *a25}"]) + "\n")
    proc = subprocess.run(
        [sys.executable, "-c", READ_IN_A_CHILD, str(path)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == (
        f"config file {path} uses a YAML alias (*name) (line 2, column 13); a config takes no aliases: "
        "write the values out\n"
    )


def test_python_tags_stay_refused_and_an_anchor_alone_is_read(tmp_path):
    path = tmp_path / "tag.yaml"
    path.write_text('data: {path: !!python/object/apply:os.system ["echo hi"]}\n')
    with pytest.raises(RamerError, match="is not valid YAML: could not determine a constructor for the tag"):
        build_config(path)
    path.write_text("data: {path: &p folder}\n")  # an anchor no alias refers to is harmless
    assert build_config(path).data.path == "folder"


def test_a_list_error_names_a_short_value_and_no_long_one():
    """The hint of a list field repeats a short given value, never a whole mapping."""
    with pytest.raises(RamerError) as e:
        config_from_dict({"model": {"ablations": {"p": "x" * 10_000}}}, "f.yaml")
    assert str(e.value) == (
        "invalid config (f.yaml): 'model.ablations': Input should be a valid list "
        "(written [a,b], e.g. --set model.ablations=[a,b])"
    )
    with pytest.raises(RamerError, match=r"e\.g\. --set model\.ablations=\[no_shuffle\]\)$"):
        build_config(None, ["model.ablations=no_shuffle"])


def test_a_set_value_for_a_text_field_is_the_text_given():
    """data.path=2024 is the folder 2024; numbers stay numbers where a number goes."""
    cfg = build_config(
        None,
        [
            "data.path=2024",
            "data.m3ed_annotation=2024-01-01",  # YAML reads a date
            "model.name=yes",  # YAML reads true
            "train.epochs=3",
            "train.lr=3e-4",
            "model.ablations=[no_shuffle]",
        ],
    )
    assert (cfg.data.path, cfg.data.m3ed_annotation, cfg.model.name) == ("2024", "2024-01-01", "yes")
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.ablations) == (3, 3e-4, ["no_shuffle"])
    assert build_config(None, ["data.path=2024", "data.path=null"]).data.path is None
    with pytest.raises(RamerError, match="'train.epochs': Input should be a valid integer"):
        build_config(None, ["train.epochs=abc"])


DEEP = "[" * 2000 + "]" * 2000  # PyYAML recurses once per level: a RecursionError came out as a traceback


def test_a_config_nested_too_deeply_is_one_error_where_a_config_is_read(tmp_path):
    from ramer.train.recipe import foreign_config

    path = tmp_path / "config.yaml"
    path.write_text(f"model: {{ablations: {DEEP}}}\n")
    with pytest.raises(RamerError, match=r"config\.yaml is not valid YAML: lists or mappings nested too deeply$"):
        build_config(path)
    with pytest.raises(RamerError, match="'train.epochs': Input should be a valid integer"):
        build_config(None, [f"train.epochs={DEEP}"])  # read as the text given, which is no number
    (tmp_path / "metrics.jsonl").write_text("")
    assert "not a config a run wrote there" in foreign_config(tmp_path)  # a new run's --out


def test_a_written_config_holds_no_alias_it_could_not_read_back(tmp_path):
    """A value met twice is written out twice (YAML would write an anchor and an alias, which a
    config may not hold): what dump_config writes, build_config reads."""
    import yaml

    from ramer import config

    shared = ["text", "audio"]
    text = yaml.dump({"model": {"a": shared, "b": shared}}, Dumper=config._NoAliasDumper)
    assert "&" not in text and "*" not in text
    (tmp_path / "c.yaml").write_text(config.dump_config(build_config(None)))
    assert build_config(tmp_path / "c.yaml") == build_config(None)


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path):
    """YAML would keep the last of two `lr:` without a word; the config names the key and the line."""
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")
    with pytest.raises(RamerError, match=r"the key 'lr' given twice in one mapping \(line 4, column 3\)"):
        build_config(path)
    path.write_text("train:\n  lr: 0.1\nmodel:\n  lr_scale: 1\n")  # the same word in two mappings is fine
    with pytest.raises(RamerError, match="unknown key 'model.lr_scale'"):
        build_config(path)


@pytest.mark.parametrize(
    "key, hint",
    [
        ("train.hiden", "model.hidden"),  # misspelled and in another section
        ("loss.epoch", "train.epochs"),
        ("model.hiden", "model.hidden"),  # misspelled in its own section
        ("train.zzzzz", None),  # near nothing: the plain line
        ("train.LR", "train.lr"),  # written in other case
        ("train.Epoch", "train.epochs"),  # in other case and misspelled
    ],
)
def test_an_unknown_key_names_the_nearest_known_key(key, hint):
    with pytest.raises(RamerError) as caught:
        build_config(overrides=[f"{key}=3"])
    said = str(caught.value)
    assert f"unknown key '{key}'" in said
    assert (f"did you mean '{hint}'?" in said) if hint else ("did you mean" not in said)


def test_an_unknown_ablation_is_refused_naming_the_known_ones():
    """A misspelled switch is an error, not a run with every part on. (The check in
    ModelConfig._known_ablations removed.)"""
    message = r"'model\.ablations': .*unknown ablation\(s\) \['no_shufle'\]; known: \["
    with pytest.raises(RamerError, match=message) as e:
        build_config(None, ["model.ablations=[no_shuffle,no_shufle]"])
    assert "'no_shuffle'" in str(e.value).split("known:")[1]
    assert build_config(None, ["model.ablations=[no_shuffle]"]).model.off("no_shuffle")


@pytest.mark.parametrize(
    "sets, message",
    [
        (["train.lr"], "--set expects KEY=VALUE, got 'train.lr'"),
        (["model..hidden=3"], "--set: malformed key 'model..hidden'"),
        (["=3"], "--set: malformed key ''"),
        (["train.lr=1", "train.lr.x=2"], "--set: 'train.lr.x' goes below 'lr', which is not a section"),
    ],
)
def test_a_malformed_set_is_one_clear_error(sets, message):
    """What ``--set`` cannot read is a RamerError saying why, not a traceback or a guess. (The
    checks of apply_override and set_in_tree removed.)"""
    with pytest.raises(RamerError) as e:
        build_config(None, sets)
    assert str(e.value) == message


def test_a_missing_config_file_is_not_taken_for_a_bundled_name(tmp_path):
    """``--config my.yaml`` that does not exist says the file is not found, not that no bundled config
    has that name. (The ``.yaml`` suffix test dropped from resolve_config.)"""
    missing = tmp_path / "my.yaml"
    with pytest.raises(RamerError) as e:
        resolve_config(str(missing))
    assert str(e.value) == f"{missing}: config file not found"
    assert resolve_config("synthetic").name == "synthetic.yaml"


def test_a_config_file_that_is_not_a_mapping_says_so(tmp_path):
    """A YAML file holding a list is named with what it holds. (The mapping check of read_yaml removed.)"""
    path = tmp_path / "list.yaml"
    path.write_text("- train.epochs=3\n")
    with pytest.raises(RamerError) as e:
        build_config(path, ["train.epochs=2"])
    assert str(e.value) == f"config file {path} must hold a mapping, not list"


def test_a_modality_dropout_of_one_is_refused():
    """p = 1 would draw every available modality and so, by the keep-one rule, hide none: the bound
    is p < 1. (``lt=1.0`` of model.modality_dropout made ``le``.)"""
    with pytest.raises(RamerError, match=r"'model\.modality_dropout': Input should be less than 1"):
        build_config(None, ["model.modality_dropout=1"])
    assert build_config(None, ["model.modality_dropout=0.99"]).model.modality_dropout == 0.99


def test_a_set_text_keeps_what_yaml_would_cut_off_or_read_as_a_tag():
    """``data.path=ds #2`` trained on ./ds: YAML cut ' #2' off as a comment, and a tag or an anchor
    off the front, with no word. A quoted text is unquoted; null is still None."""
    for given, path in [
        ("ds #2", "ds #2"),
        ("ds  # note", "ds  # note"),
        ("!!str ds", "!!str ds"),
        ("&a ds", "&a ds"),
        ("'my ds'", "my ds"),
        ('"x #1"', "x #1"),
        ("'ds' #c", "'ds' #c"),  # not one quoted string: as given
        ('"a" #x "b"', '"a" #x "b"'),
        (" ds ", "ds"),
        ("null", None),
    ]:
        assert build_config(None, [f"data.path={given}"]).data.path == path, given


@pytest.mark.parametrize(
    "given, read", [("010", 8), ("0123", 83), ("0b101", 5), ("0x1f", 31), ("1:30", 90), ("!!int 010", 8)]
)
def test_a_set_number_yaml_reads_otherwise_than_decimal_is_refused(given, read):
    """YAML 1.1 reads 010 as octal 8 and 1:30 as 90: ``--set train.seed=010`` trained seed 8."""
    with pytest.raises(RamerError) as e:
        build_config(None, [f"train.seed={given}"])
    assert str(e.value).startswith(
        f"--set train.seed={given}: YAML reads {given} as {read}; write the number in decimal"
    )
    assert build_config(None, ["train.seed=10", "train.lr=0.05", "model.hidden=1_024"]).train.seed == 10
    for decimal, number in [("00", 0), ("08", 8), ("10 # ten", 10), ("0.5", 0.5), (".5", 0.5), ("1e-3", 1e-3)]:
        key = "train.seed" if isinstance(number, int) else "train.lr"
        assert getattr(build_config(None, [f"{key}={decimal}"]).train, key[6:]) == number, decimal


@pytest.mark.parametrize("key", ["train", "data", "data.synthetic", "model.layers"])
def test_a_set_of_a_whole_section_is_refused(key):
    """``--set "train={lr: 0.01}"`` replaced the section: every value of the config file and of the
    --set before it was lost (the run trained 8 epochs, the defaults'), and the keys it set escaped
    the checks of the dotted keys (tune searched its lr all the same)."""
    with pytest.raises(RamerError) as e:
        build_config(resolve_config("synthetic"), ["train.epochs=1", f"{key}={{seed: 5}}"])
    assert str(e.value) == (f"--set {key}={{seed: 5}}: '{key}' is a section; set its keys one by one ({key}.KEY=VALUE)")


@pytest.mark.parametrize(
    "given",
    [
        "train.threads=1099511627776",  # torch.set_num_threads: 'Overflow when unpacking long'
        "model.ffn=99999999999999999999999",  # torch.empty: a C++ traceback
        "model.queue_size=99999999999999999999999",
        "model.max_segments=99999999999999999999999",
        "model.target_offset=9223372036854775807",
        "model.target_prior=1e308",  # 'value cannot be converted to type float without overflow'
        "model.layers.audio=99999999999999999999999",  # built layers until the machine's memory ran out
        "model.mult_kernels.text=1000001",  # 15 GiB and 9 minutes for one epoch on 64 scenes
    ],
)
def test_a_size_past_any_model_is_refused_where_the_config_is_read(given):
    key = given.split("=")[0]
    with pytest.raises(RamerError, match=rf"'{re.escape(key)}': Input should be less than or equal to"):
        build_config(None, [given])


def test_a_loss_weight_that_overflows_the_loss_is_refused_naming_it():
    """``loss.w_cl=1e300`` made the loss infinite at the first step, an error naming no key."""
    with pytest.raises(
        RamerError, match=r"'loss.w_cl': Value error, a loss weight must be at most 1e\+06, not 1e\+300"
    ):
        build_config(None, ["loss.w_cl=1e300"])
    assert build_config(None, ["loss.w_cl=1000"]).loss.w_cl == 1000


def test_a_missing_rate_that_hides_every_modality_is_refused():
    """``data.missing_rate=1`` trained with every modality hidden, without a word (``bench
    --missing-rates`` refuses 1)."""
    with pytest.raises(RamerError, match=r"'data.missing_rate': Input should be less than 1 \(got 1.0\)"):
        build_config(None, ["data.missing_rate=1.0"])
    assert build_config(None, ["data.missing_rate=0.99"]).data.missing_rate == 0.99


@pytest.mark.parametrize(
    "given, unknown, hint", [("Train.lr", "Train", "train"), ("model.Layers.text", "model.Layers", "model.layers")]
)
def test_a_section_written_in_other_case_is_named(given, unknown, hint):
    with pytest.raises(RamerError, match=rf"unknown key '{unknown}' \(did you mean '{hint}'\?\)"):
        build_config(overrides=[f"{given}=3"])


@pytest.mark.parametrize("text, read", [("010", 8), ("1:30", 90), ("0x1f", 31), ("!!int 010", 8), ("0b101", 5)])
def test_a_config_file_number_yaml_reads_otherwise_than_in_decimal_is_refused(tmp_path, text, read):
    """`seed: 010` in a file trained seed 8, as `--set train.seed=010` did."""
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  seed: {text}\n")
    with pytest.raises(RamerError, match=rf"c.yaml: YAML reads {text.split()[-1]} as {read}; .* \(line 2, column 9\)"):
        build_config(path)


def test_a_config_file_keeps_the_numbers_written_in_decimal(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  seed: 08\n  epochs: 1_000\n  lr: 1.0e-3\n  weight_decay: .5\n")
    cfg = build_config(path)
    assert (cfg.train.seed, cfg.train.epochs, cfg.train.lr, cfg.train.weight_decay) == (8, 1000, 1e-3, 0.5)
