"""What `ramer data import` shows while it works: the media stages advance per utterance (one hour
of media was `audio: 0/1` for minutes), and where stderr is not a terminal (a log file, CI) each
stage says in plain lines when it starts, how far it is, and when it ends.

The bar is replaced by ``Recorder``, which records what it is told; the text model is the hash
stand-in ``fake_text``. The media tests skip, with the reason, without the optional extras.
"""

from __future__ import annotations

import re

import pytest
from rich.console import Console
from test_conversations import NEEDS_FACE, NEEDS_IMPORT, tone, two_faces, write_audio, write_table, write_video

from ramer.cli import main
from ramer.data import conversations as C
from ramer.data import features as F


class Recorder:
    """Stands in for rich's ``Progress``: records each task's total and every advance in ``events``."""

    def __init__(self, events: list):
        self.events = events

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def add_task(self, description: str, total: int):
        kind = description.split(":")[0]
        self.events.append(("total", kind, total))
        return kind

    def advance(self, task, n: int = 1):
        if n:
            self.events.append(("advance", task, n))


def media_rows(media: str, n: int, seconds: float) -> list[dict]:
    """Conversation ``m``: ``n`` utterances of ``seconds`` each over ``media``, alternating speakers."""
    return [
        {"conversation": "m", "index": i, "speaker": "ann" if i % 2 == 0 else "bob", "text": f"line {i}"}
        | {"start": seconds * i, "end": seconds * (i + 1), "media": media, "present": "bob" if i % 2 == 0 else "ann"}
        | {"labels": "joy", "split": "test"}
        for i in range(n)
    ]


def recorded_import(tmp_path, monkeypatch, name: str, rows: list[dict]) -> list:
    """Import ``rows`` with the bar replaced by ``Recorder``; the media functions add ``("returned",
    kind)`` when they return, so that advances made while a conversation was computed come first."""
    events: list = []
    monkeypatch.setattr(C, "_progress", lambda console: Recorder(events))
    for kind, real in (("audio", F.audio_features), ("visual", F.visual_features)):

        def wrapped(*args, advance=None, _real=real, _kind=kind):
            got = _real(*args, advance=advance) if advance is not None else _real(*args)
            events.append(("returned", _kind))
            return got

        monkeypatch.setattr(F, f"{kind}_features", wrapped)
    src = write_table(tmp_path / f"{name}.csv", rows)
    C.import_conversations(src, tmp_path / name, console=Console(stderr=True))
    return events


def test_the_audio_bar_advances_per_utterance_while_its_conversation_is_decoded(tmp_path, fake_text, monkeypatch):
    """One conversation over one media file was one step of the bar, after the whole file was done."""
    pytest.importorskip("librosa", reason=NEEDS_IMPORT)
    write_audio(tmp_path / "talk.wav", tone(180, 2.0))
    events = recorded_import(tmp_path, monkeypatch, "ds", media_rows("talk.wav", 4, 0.5))
    audio = [e for e in events if e[1] == "audio"]
    assert audio == [("total", "audio", 4)] + [("advance", "audio", 1)] * 4 + [("returned", "audio")]


def test_the_visual_bar_advances_per_utterance_while_its_conversation_is_searched(tmp_path, fake_text, monkeypatch):
    pytest.importorskip("librosa", reason=NEEDS_IMPORT)
    pytest.importorskip("mediapipe", reason=NEEDS_FACE)
    if not F.face_available():
        pytest.skip(NEEDS_FACE)
    write_video(tmp_path / "scene.mp4", two_faces, 2.0)
    events = recorded_import(tmp_path, monkeypatch, "ds", media_rows("scene.mp4", 4, 0.5))
    visual = [e for e in events if e[1] == "visual"]
    steps = [e for e in visual if e[0] == "advance"]
    assert visual[0] == ("total", "visual", 4) and visual[-1] == ("returned", "visual")
    assert len(steps) > 1 and sum(n for _, _, n in steps) == 4  # more than one step in the one conversation


def test_a_log_gets_a_plain_line_when_each_stage_starts_goes_on_and_ends(tmp_path, fake_text, capsys, monkeypatch):
    """With stderr to a file the import printed nothing until the end, however long the media."""
    pytest.importorskip("librosa", reason=NEEDS_IMPORT)
    monkeypatch.setattr(C, "LOG_EVERY", 0.0, raising=False)  # a how-far line at every utterance
    write_audio(tmp_path / "talk.wav", tone(180, 2.0))
    rows = media_rows("talk.wav", 4, 0.5) + [
        {"conversation": "t", "index": 0, "speaker": "dan", "text": "text only", "labels": "joy", "split": "test"}
    ]
    src = write_table(tmp_path / "talk.csv", rows)
    assert main(["data", "import", str(src), "--out", str(tmp_path / "ds")]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err  # no colour, no bar redrawn over itself
    seconds = r"\(\d+ s\)"
    expected = [
        r"text: 5 utterances in 2 conversations \(5 to compute, 0 cached\) \.\.\.",
        rf"text: 4 of 5 utterances computed {seconds}",  # each conversation's texts in batches of their own
        r"text: 5 utterances in 2 conversations: done in \d+\.\d s \(computed 5, cached 0\)",
        r"audio: 4 utterances in 1 conversation \(4 to compute, 0 cached\) \.\.\.",
        rf"audio: 1 of 4 utterances computed {seconds}",
        rf"audio: 2 of 4 utterances computed {seconds}",
        rf"audio: 3 of 4 utterances computed {seconds}",
        r"audio: 4 utterances in 1 conversation: done in \d+\.\d s \(computed 4, cached 0\)",
    ]
    lines = err.splitlines()
    assert len(lines) == len(expected) + 1 and lines[-1].startswith("next: "), err
    for pattern, line in zip(expected, lines):
        assert re.fullmatch(pattern, line), (pattern, line)
    # the same again: everything from the cache, one line a stage
    assert main(["data", "import", str(src), "--out", str(tmp_path / "ds")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(r"\d+\.\d s", "T s", line) for line in lines[:-1]] == [
        "text: 5 utterances in 2 conversations: done in T s (computed 0, cached 5)",
        "audio: 4 utterances in 1 conversation: done in T s (computed 0, cached 4)",
    ]


def test_force_color_in_a_log_gets_the_plain_lines(tmp_path, fake_text, capsys, monkeypatch):
    """FORCE_COLOR=1 (many CI templates set it) made rich take stderr, a log file, for a terminal: the
    import's log held the bar's cursor codes instead of its plain lines."""
    from test_conversations import base_rows

    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    src = write_table(tmp_path / "talk.csv", base_rows())
    assert main(["data", "import", str(src), "--out", str(tmp_path / "ds")]) == 0
    err = capsys.readouterr().err
    assert "\x1b" not in err, repr(err[:300])
    assert re.search(r"^text: \d+ utterances in 3 conversations \(\d+ to compute, 0 cached\) \.\.\.$", err, re.M), err
