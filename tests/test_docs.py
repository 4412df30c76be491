"""The docs name what the code has: every flag of every command in README's command-line block, and
every config key somewhere in README or docs/."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from ramer.cli import build_parser
from ramer.config import Config

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
            flags = {o for a in sub_parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
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
    """The dotted key or ``Class.field`` anywhere; a per-modality entry (``layers.text``) by its
    group's key; or the field's name in a table row of a doc section (between headings) that names
    the key's parent (``data.synthetic`` and its table of settings, ``loss.`` and the loss table)."""
    parent = key.rsplit(".", 1)[0]
    for text in docs.values():
        if named(key, text) or named(f"{cls}.{name}", text):
            return True
        if name in ("text", "audio", "visual") and f"`{parent}`" in text:
            return True
        for section in re.split(r"\n(?=#)", text):
            if re.search(rf"(?<![\w.]){re.escape(parent)}\.", section) and any(
                ln.startswith("|") and named(name, ln) for ln in section.splitlines()
            ):
                return True
    return False


KEYS = list(config_keys(Config))


@pytest.mark.parametrize("key, cls, name", KEYS, ids=[k for k, _, _ in KEYS])
def test_every_config_key_is_in_the_docs(key, cls, name):
    docs = {p.name: p.read_text() for p in DOCS}
    assert documented(key, cls, name, docs), f"{key} is named nowhere in README.md or docs/"
