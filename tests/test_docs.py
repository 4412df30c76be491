"""The docs name what the code has: every flag of every command in README's command-line block,
every config key somewhere in README or docs/, every module on ARCHITECTURE's map and in its import
order; and the config defaults the docs state are the code's."""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from ramer.cli import build_parser
from ramer.config import Config, build_config
from ramer.models import BUILDERS, CLASSICAL

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def commands() -> dict[str, set[str]]:
    """Command ('train', 'data import') -> its long flags, as the parser has them."""
    out = {}
    root = build_parser()
    for name, parser in subparsers(root).items():
        nested = subparsers(parser)
        for sub_name, sub_parser in nested.items() if nested else [("", parser)]:
            flags = {  # but a hidden one, a refusal (--seed of bench: not taken for --seeds)
                o
                for a in sub_parser._actions
                for o in a.option_strings
                if o.startswith("--") and o != "--help" and a.help != argparse.SUPPRESS
            }
            out[f"{name} {sub_name}".strip()] = flags
    out[""] = {o for a in root._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    return out


def readme_block() -> dict[str, set[str]]:
    """Command -> the flags its lines in README's 'Command line' block show (continuation lines,
    indented, belong to the line above; a comment after '#' is not a flag)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```", 2)[1]
    out: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        code = line.split("#", 1)[0]
        if line.startswith("ramer"):
            words = code.split()
            current = " ".join(words[1:3]) if words[1:2] == ["data"] else (words[1] if words[1][0] != "-" else "")
            out.setdefault(current, set())
        if current is not None and code.strip():
            out[current] |= set(re.findall(r"--[a-z][a-z-]*", code))
    return out


def test_readmes_command_block_shows_every_flag_of_every_command():
    code, shown = commands(), readme_block()
    assert set(shown) == set(code)
    differ = {c: (sorted(code[c] - shown[c]), sorted(shown[c] - code[c])) for c in code if code[c] != shown[c]}
    assert differ == {}  # command: (flags README lacks, flags the parser lacks)


def config_keys(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from config_keys(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", model.__name__, name


def named(name: str, text: str) -> bool:
    """``name`` (a key, ``Class.field``, a field) as a whole word: not ``data.format`` in ``data.formats``."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", text) is not None


def documented(key: str, cls: str, name: str, docs: dict[str, str]) -> bool:
    """The dotted key or ``Class.field`` anywhere; an entry of a per-modality group (``layers.text``,
    a class whose fields are the three modalities) by its group's key; or the field's name in code
    in the first cell of a table of keys (its header's first cell ``key``) in a doc section (between
    headings) that names the key's parent in code (`` `data.synthetic` ``, `` `loss` ``)."""
    parent = key.rsplit(".", 1)[0]
    for text in docs.values():
        if named(key, text) or named(f"{cls}.{name}", text):
            return True
        if cls in PER_MODALITY and f"`{parent}`" in text:
            return True
        for section in re.split(r"\n(?=#)", text):
            if re.search(rf"`{re.escape(parent)}[.`]", section) and name in table_keys(section):
                return True
    return False


def table_keys(section: str) -> set[str]:
    """The names in code in the first cell of each row of the section's tables of keys."""
    keys, header, lines = set(), None, section.splitlines()
    for before, line in zip([""] + lines, lines):
        if not line.startswith("|"):
            continue
        first = line.split("|")[1].strip()
        if not before.startswith("|"):
            header = first
        elif header == "key":
            keys |= set(re.findall(r"`([^`]*)`", first))
    return keys


KEYS = list(config_keys(Config))
PER_MODALITY = {c for c in {c for _, c, _ in KEYS} if {n for _, k, n in KEYS if k == c} == {"text", "audio", "visual"}}


@pytest.mark.parametrize("key, cls, name", KEYS, ids=[k for k, _, _ in KEYS])
def test_every_config_key_is_in_the_docs(key, cls, name):
    docs = {p.name: p.read_text() for p in DOCS}
    assert documented(key, cls, name, docs), f"{key} is named nowhere in README.md or docs/"


ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
PACKAGE = ROOT / "src" / "ramer"


def architecture_map() -> str:
    """The code block of docs/ARCHITECTURE.md that maps the package, one line per module, up to the
    folders beside it (``tests/``, ``benchmarks/``, ``docs/``)."""
    blocks = ARCHITECTURE.read_text().split("```")[1::2]
    return next(b for b in blocks if b.lstrip().startswith("src/ramer/")).split("\ntests/", 1)[0]


def mapped_files(text: str) -> set[str]:
    """The package files the map's tree names, as paths below ``src/ramer/`` (``data/store.py``): a
    line's first field (before two spaces) holds a folder (``data/``) or file names (``mosei.py,
    m3ed.py``), placed in the folder of the nearest line indented less; descriptions and their
    continuation lines name no file there."""
    folders: list[tuple[int, str]] = []  # (indent, folder path) of the open folders
    files = set()
    for line in text.splitlines()[1:]:  # below src/ramer/
        indent = len(line) - len(line.lstrip(" "))
        first = re.split(r" {2,}", line.strip(), maxsplit=1)[0]
        names = first.split(", ")
        if not all(re.fullmatch(r"[\w*]+(\.\w+|/)", n) for n in names):
            continue  # a description's continuation line
        folders = [(i, f) for i, f in folders if i < indent]
        where = "".join(f for _, f in folders)
        for n in names:
            if n.endswith("/"):
                folders.append((indent, where + n))
            else:
                files.add(where + n)
    return files


def test_architecture_maps_every_module_and_names_no_gone_one():
    """Every file of the package is on the map, in its folder (``train/classical.py`` is not mapped
    by ``models/classical.py``); a paper part or a bundled config by its stem; and every file the
    map's tree names is a file of the package."""
    text = architecture_map()
    files = [p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    mapped = mapped_files(text)
    # the map names a paper part ("parts/  one module per paper part: encoders, ...") and a bundled
    # config ("configs/*.yaml  named configs: synthetic, ...") by its stem
    by_stem = ("parts", "configs")
    unmapped = [
        str(p.relative_to(PACKAGE))
        for p in files
        if p.suffix in (".py", ".html", ".yaml")
        and not (named(p.stem, text) if p.parent.name in by_stem else str(p.relative_to(PACKAGE)) in mapped)
    ]
    gone = sorted(f for f in mapped if "*" not in f and not (PACKAGE / f).is_file())
    assert (unmapped, gone) == ([], [])  # (files the map lacks, files the map names that do not exist)


def import_chains() -> list[list[set[str]]]:
    """ARCHITECTURE's "Which way imports run": each chain (``a`` → ``b``, ``c`` → ...; chains split
    by ``;``) as its levels, top first, each level a set of units (``train/`` -> ``train``)."""
    text = ARCHITECTURE.read_text().split("## Which way imports run", 1)[1]
    sentence = text.split("Downward only:", 1)[1].split(". ", 1)[0]
    return [
        [set(n.rstrip("/") for n in re.findall(r"`([\w/]+)`", level)) for level in chain.split("→")]
        for chain in sentence.split(";")
    ]


def package_units() -> set[str]:
    """The package's top-level modules (``config``, ``__main__``) and subpackages (``train``)."""
    return {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def unit_imports() -> dict[str, set[str]]:
    """Top-level unit (a module such as ``config``, or a subpackage such as ``train``) -> the other
    units it imports, anywhere in its files (function-level imports included)."""
    units = package_units()
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "ramer"]
            for name in names:
                parts = name.split(".")
                if parts[0] == "ramer" and len(parts) > 1 and parts[1] in units and parts[1] != unit:
                    graph.setdefault(unit, set()).add(parts[1])
    return graph


def test_the_import_order_names_every_module_and_holds():
    """Every module and subpackage is in a chain of "Which way imports run" (the top package and
    ``__main__`` stand above them), and no unit imports one that a chain puts above it."""
    chains = import_chains()
    listed = set().union(*(level for chain in chains for level in chain))
    units = package_units()
    graph = unit_imports()
    upward = sorted(
        f"{u} -> {v}"
        for chain in chains
        for i, level in enumerate(chain)
        for u in level
        for v in graph.get(u, ())
        if any(v in above for above in chain[:i])
    )
    assert sorted(units - listed - {"__init__", "__main__"}) == []  # units no chain places
    assert upward == []


def default_of(key: str, doc: str = "") -> object:
    """The default of a dotted config key (``model.hidden``) as a config file would write it: the
    config's, or in docs/BENCH.md the bench's (its config and the settings it applies first)."""
    if doc == "BENCH.md":
        from ramer.bench import DEFAULT_CONFIG, DEFAULT_SETS

        value = build_config(DEFAULT_CONFIG, DEFAULT_SETS).model_dump(mode="json")
    else:
        value = Config().model_dump(mode="json")
    for part in key.split("."):
        value = value[part]
    return value


def stated_defaults() -> list[tuple[str, str, str, object]]:
    """(doc, dotted key, the text stated, its value) for each default the docs state in a form that
    reads one way: ``ModelConfig.field`` (VALUE...), ``model.key`` (NUMBER...), ``model.key``
    (what it is, NUMBER...), ``model.key`` (default NUMBER...), ``model.key``, NUMBER, or a row of
    DATA.md's ``data.synthetic`` table (``| `a`, `b` | 1, 2 | ...``)."""
    classes = {cls: key.rsplit(".", 1)[0] for key, cls, _ in KEYS}
    keys = {key for key, _, _ in KEYS}
    found = []

    def add(doc, key, text, bare_word_ok):
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return
        if isinstance(value, str) and re.fullmatch(r"-?[\d.]+e-?\d+", text):  # 3e-4: PyYAML's string
            value = float(text)
        if isinstance(value, (int, float, bool)) or value is None or (bare_word_ok and isinstance(value, str)):
            found.append((doc, key, text, value))

    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"`(\w+Config)\.(\w+)` \(([^;:,()]+)", text):
            if m.group(1) in classes and f"{classes[m.group(1)]}.{m.group(2)}" in keys:
                add(path.name, f"{classes[m.group(1)]}.{m.group(2)}", m.group(3).strip(), True)
        number = r"([-\d.e]+|true|false|null)(?: by default)?[;:,)]"
        for form in (rf"`([a-z_]+\.[\w.]+)` \((?:[^(),;`]*, |default )?{number}", rf"`([a-z_]+\.[\w.]+)`,\s+{number}"):
            for m in re.finditer(form, text):
                if m.group(1) in keys:
                    add(path.name, m.group(1), m.group(2), False)
    data = (ROOT / "docs" / "DATA.md").read_text()
    table = data.split("Its settings are the keys of `data.synthetic`", 1)[1].split("\n\n", 1)[1].split("\n\n", 1)[0]
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names, values = re.findall(r"`(\w+)`", cells[0]), [v.strip() for v in cells[1].split(",")]
        assert len(names) == len(values), row
        for name, value in zip(names, values):
            add("DATA.md", f"data.synthetic.{name}", value, True)
    return found


def test_the_defaults_the_docs_state_are_the_configs():
    stated = stated_defaults()
    assert len(stated) > 30, "the forms this test reads are gone from the docs"
    wrong = [
        f"{doc}: {key} stated as {text}, default {default_of(key, doc)!r}"
        for doc, key, text, value in stated
        if value != default_of(key, doc)
    ]
    assert wrong == []


def test_the_readers_of_the_docs_take_the_forms_a_harmless_edit_makes(tmp_path, monkeypatch):
    """A default stated as ``3e-4`` (PyYAML reads a string, so it was never compared), and a code
    block put above ARCHITECTURE's map (the map test read that block and failed on every module)."""
    doc = tmp_path / "NOTES.md"
    doc.write_text("`train.lr` (3e-4, say) when a run diverges\n")
    monkeypatch.setattr(sys.modules[__name__], "DOCS", [doc])
    assert [(key, value) for _, key, _, value in stated_defaults()[:1]] == [("train.lr", 3e-4)]
    arch = tmp_path / "ARCHITECTURE.md"
    arch.write_text(ARCHITECTURE.read_text().replace("```", "```bash\nramer train --data D\n```\n\n```", 1))
    monkeypatch.setattr(sys.modules[__name__], "ARCHITECTURE", arch)
    assert architecture_map().lstrip().startswith("src/ramer/")


def section(path: Path, heading: str) -> str:
    """The text of ``path`` under the heading line ``heading``, up to the next heading of its level or above."""
    text = path.read_text()
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    ends = [m.start() for m in re.finditer(rf"^#{{1,{len(level)}}} ", text[start:], re.M)]
    return text[start : start + ends[0]] if ends else text[start:]


@pytest.mark.parametrize("name", sorted({*BUILDERS, *CLASSICAL}))
def test_the_lists_of_models_name_every_model(name):
    """README's "Models:", BENCH's model table and a heading of docs/MODEL.md name each model of the
    package (the lists ARCHITECTURE's "Adding a model" tells a contributor to extend)."""
    readme = (ROOT / "README.md").read_text()
    models_sentence = readme[readme.index("Models: ") :].split("presets", 1)[0]
    assert f"`{name}`" in models_sentence, f"README's 'Models:' lacks {name}"
    assert f"`{name}`" in section(ROOT / "docs" / "BENCH.md", "## Models"), f"BENCH.md's model table lacks {name}"
    headings = [line.lower() for line in (ROOT / "docs" / "MODEL.md").read_text().splitlines() if line.startswith("#")]
    assert any(re.search(rf"(`|\b){re.escape(name)}(`|\b)", h) for h in headings), (
        f"no heading of MODEL.md names {name}"
    )


def test_the_format_flags_help_names_every_format():
    """cli.FORMAT_HELP is written out (cli does not import the readers to build it)."""
    from ramer.cli import FORMAT_HELP
    from ramer.data.formats import FORMATS

    named = re.findall(r"[a-z0-9_]+", FORMAT_HELP.split(":", 1)[1])
    assert set(FORMATS) <= set(named), sorted(set(FORMATS) - set(named))


def test_every_ablation_has_its_row_in_models_ablation_table():
    """docs/MODEL.md's ablation table: one row per switch of ``config.ABLATIONS``, in that order,
    and the searched keys each leaves out as ``spaces.UNUSED_WHEN_OFF`` has them."""
    from ramer.config import ABLATIONS
    from ramer.models.spaces import UNUSED_WHEN_OFF

    text = (ROOT / "docs" / "MODEL.md").read_text()
    section = text.split("### Ablations (", 1)[1].split("\n### ", 1)[0]
    rows = [ln.split(" | ") for ln in section.splitlines() if ln.startswith("| `")]
    assert [r[0].strip("| `") for r in rows] == list(ABLATIONS)
    for row in rows:
        name, left_out = row[0].strip("| `"), set(re.findall(r"`([\w.]+)`", row[-1]))
        assert left_out == set(UNUSED_WHEN_OFF.get(name, ())), name
