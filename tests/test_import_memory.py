"""`ramer data import`: building the split stores holds about the stored arrays, not copies of them.

Every sample's scene (every person over the utterances within ``--context``) is a padded block of
tokens, so a split's arrays are many times its table (EmoryNLP's train split, 7,551 utterances at
``--context 8``: 1.1 GB dense, 0.13 GB packed). The stores are built in place and packed
(``conversations.scene_tokens``); holding each scene's block in a list, then concatenating and
casting, held about twice the dense arrays at once. The text stage hands back the heap its batches
freed, which otherwise stayed under those arrays. The import's peak RSS on EmoryNLP: 3.0 GB at
first, 1.2 GB built dense in place, 0.86 GB built packed. The arrays built in place must equal the
scenes cut from each conversation's grid, bit for bit.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from ramer.batch import ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.data import features as F
from ramer.data.conversations import Conversation, ConvFeatures, Utterance, build_split

NAMES = ("anger", "joy", "neutral")


def conversations(n: int, media: bool, seed: int = 0) -> tuple[list[Conversation], list[ConvFeatures]]:
    """``n`` conversations of 4 persons and 6-14 utterances; features random where present (with
    ``media``, audio and visual too; without, zeros as a text-only import has them)."""
    rng = np.random.default_rng(seed)
    convs, feats = [], []
    for k in range(n):
        S, P = int(rng.integers(6, 15)), 4
        persons = [f"c{k}/p{j}" for j in range(P)]
        utts = [
            Utterance(
                row=k * 20 + s + 2,
                conversation=f"c{k}",
                index=s,
                speaker=persons[int(rng.integers(P))],
                text=f"u{s}",
                labels=(NAMES[int(rng.integers(len(NAMES)))],),
                target=bool(rng.random() < 0.9),
                split="train",
            )
            for s in range(S)
        ]
        convs.append(Conversation(f"c{k}", utts, persons, split="train"))
        text_ok = rng.random(S) < 0.9
        f = ConvFeatures(
            np.where(text_ok[:, None], rng.standard_normal((S, F.TEXT_DIM)), 0).astype(np.float32),
            text_ok,
            np.zeros((S, F.AUDIO_DIM), np.float32),
            np.zeros(S, bool),
            np.zeros((P, S, F.VISUAL_DIM), np.float32),
            np.zeros((P, S), bool),
        )
        if media:
            f.audio_ok = rng.random(S) < 0.8
            f.audio = np.where(f.audio_ok[:, None], rng.standard_normal((S, F.AUDIO_DIM)), 0).astype(np.float32)
            f.visual_ok = rng.random((P, S)) < 0.5
            f.visual = np.where(f.visual_ok[..., None], rng.standard_normal((P, S, F.VISUAL_DIM)), 0).astype(np.float32)
        feats.append(f)
    return convs, feats


def build(convs, feats, context: int = 8, everyone: bool = False):
    persons = sorted({q for c in convs for q in c.persons})
    return build_split(
        convs, feats, NAMES, {q: i for i, q in enumerate(persons)}, None, 0, context, "t.csv[train]", everyone
    )


@pytest.mark.parametrize("media", [False, True])
@pytest.mark.parametrize("everyone", [False, True])
def test_scenes_are_the_conversation_grid_cut_at_each_target(everyone, media):
    """Each sample's tokens are its conversation's grid (text and audio on the speaker's row,
    visual per person) over the utterances within the context, person by person, bit for bit
    (a -0.0 in a present row too); the features are stored packed, the rows of present tokens only."""
    convs, feats = conversations(12, media=media)
    s0 = int(np.flatnonzero(feats[1].text_ok)[0])
    feats[1].text[s0, :2] = -0.0
    store, _ = build(convs, feats, context=3, everyone=everyone)
    assert store.packed
    for j, name in enumerate(("text", "audio", "visual")):
        assert len(getattr(store, name)) == int(store.present[:, j].sum())
    i = 0
    for c, f in zip(convs, feats):
        P, S = len(c.persons), len(c.utterances)
        spk = np.asarray(c.speakers)
        is_spk = np.zeros((P, S), bool)
        is_spk[spk, np.arange(S)] = True
        grid = {
            "text": np.where(is_spk[..., None], f.text[None], 0),
            "audio": np.where(is_spk[..., None], f.audio[None], 0),
            "visual": f.visual,
            "present": np.stack([is_spk & f.text_ok[None], is_spk & f.audio_ok[None], f.visual_ok], -1),
        }
        for s, u in enumerate(c.utterances):
            if not u.target:
                continue
            a, b = max(0, s - 3), min(S, s + 4)
            for p in range(P) if everyone else [int(spk[s])]:
                o, o2 = store.token_offsets[i], store.token_offsets[i + 1]
                assert tuple(store.grid[i]) == (P, b - a) and tuple(store.target[i]) == (p, s - a)
                assert store.role[i] == (ROLE_SPEAKER if p == spk[s] else ROLE_NONSPEAKER)
                here = grid["present"][:, a:b].reshape(o2 - o, 3)
                for j, (name, g) in enumerate(grid.items()):
                    want = g[:, a:b].reshape(o2 - o, -1)
                    if name == "present":
                        got = store.present[o:o2]
                    else:  # as a batch reads them: +0.0 where the modality is absent
                        got, want = store.token_features(name, o, o2), np.where(here[:, j : j + 1], want, 0)
                    assert got.dtype == (bool if name == "present" else np.float32)
                    assert np.array_equal(got.view(np.uint8), want.astype(got.dtype).view(np.uint8)), (name, i)
                i += 1
    assert i == len(store)


@pytest.mark.parametrize("media", [False, True])
def test_building_a_split_holds_about_its_arrays(media):
    """Peak memory traced while building a split is under 1.3 times the arrays it returns (the
    scenes held as lists, then concatenated and cast, peaked at 1.8 times), and those hold the
    features of present tokens only: a tenth of the dense (T, d) arrays here without media (the
    dense arrays were built first, then packed, before the features were stored packed)."""
    convs, feats = conversations(60, media=media, seed=1)
    tracemalloc.start()
    try:
        store, _ = build(convs, feats)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stored = sum(getattr(store, k).nbytes for k in ("text", "audio", "visual", "present"))
    stored += sum(rows.nbytes for rows in store.feature_rows.values())
    dense = len(store.present) * (F.TEXT_DIM + F.AUDIO_DIM + F.VISUAL_DIM) * 4
    assert stored > 5e6  # large enough that the arrays, not the small lists, decide the peak
    assert peak < 1.3 * stored, f"building held {peak / stored:.2f} times the {stored / 1e6:.0f} MB it returns"
    assert peak < (0.15 if not media else 0.45) * dense, f"building held {peak / dense:.2f} of the dense arrays"


def test_the_text_stage_gives_freed_memory_back(monkeypatch):
    """The text stage hands the heap freed by its batches back every ``TEXT_TRIM_BATCHES`` batches
    and at its end (without, EmoryNLP's text stage grew by 0.75 GB that stayed for the build)."""
    trims: list[int] = []

    class Model:  # stands in for the bundled text model
        def encode(self, chunk, **kw):
            return np.ones((len(chunk), F.TEXT_DIM), np.float32)

    monkeypatch.setattr(F, "_TEXT_MODEL", Model())
    monkeypatch.setattr(F, "give_back_freed_memory", lambda: trims.append(1))
    batches = 2 * F.TEXT_TRIM_BATCHES + 3
    out = F.embed_texts(["a"] * (batches * F.TEXT_BATCH - 5))
    assert out.shape == (batches * F.TEXT_BATCH - 5, F.TEXT_DIM) and out.all()
    assert len(trims) == 2 + 1


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"), reason="glibc's malloc_trim"
)
def test_giving_back_freed_memory_lowers_the_resident_size():
    """Blocks freed below one still held stay resident until ``give_back_freed_memory``. Measured in
    a fresh interpreter: the heap that earlier tests left (free blocks the new ones reuse, under
    ``pytest -n``'s worker threads too) would decide how much of it is new pages."""
    script = """
import os
from pathlib import Path
from ramer.data import features as F

def resident():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

blocks = [bytes(100_000) for _ in range(1500)]  # under glibc's mmap threshold: from the heap
held = blocks[-1]
del blocks
before = resident()
F.give_back_freed_memory()
print(before - resident(), len(held))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    given_back, held = map(int, proc.stdout.split())
    assert given_back > 100e6, f"{given_back / 1e6:.0f} MB given back"
    assert held == 100_000
