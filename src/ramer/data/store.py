"""Scenes of one split as flat arrays, in memory or memory-mapped, and their collation to a Batch.

Every loader (synthetic, MOSEI, M3ED, MEmoR, imported conversations) produces a ``SceneStore``;
the native on-disk format (``docs/DATA.md``) is these arrays as ``.npy`` files, read back with
``np.load(mmap_mode="r", allow_pickle=False)``: nothing in a data directory can run code.
Version 2 of the format stores each feature array packed: only the rows of the tokens its
modality is present at, in token order (version 1, dense ``(T, d_m)`` arrays, is still read).
A loaded version-2 store keeps them packed, with ``feature_rows`` mapping each token to its row.

Layout of one split with ``n`` scenes, ``T`` tokens in all and ``Q`` persons in all:

==========================  ================  =============================================
array                       shape / dtype     meaning
==========================  ================  =============================================
``text, audio, visual``     (T, d_m) float32  token features, person-major within a scene;
                                              packed: (R_m, d_m), the rows of present tokens
``present``                 (T, 3) bool       presence of text / audio / visual per token
``token_offsets``           (n+1,) int64      scene i owns tokens [off[i], off[i+1])
``grid``                    (n, 2) int32      (P, S) of each scene, P * S tokens
``labels``                  (n, C) uint8      multi-hot labels
``target``                  (n, 2) int32      (person, segment) of the target; (-1, -1) = whole
``role``                    (n,) int8         1 speaker, 0 non-speaker, -1 none
``person_offsets``          (n+1,) int64      scene i owns persons [poff[i], poff[i+1])
``character``               (Q,) int32        a stable id of each person (-1 unknown)
``personality``             (Q, d_pi) float32 optional; absent when d_pi == 0
``personality_present``     (Q,) bool         optional, with ``personality``
``target_tokens``           (T,) bool         optional; True on each target token of a scene
                                              that has several (its ``target`` is (-1, -1))
``ids``                     n strings         sample ids (``ids.json``)
==========================  ================  =============================================

A scene that marks target tokens is collated with ``scope`` = its marked tokens and ``target`` =
-1: every model pools (and the label-wise attention attends) over the union of its targets.
Scenes that mark none keep the rule of ``target``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import tokenize
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ramer.batch import MODALITIES, ROLE_NONE, ROLE_NONSPEAKER, ROLE_SPEAKER, Batch
from ramer.config import TASKS
from ramer.console import names_line
from ramer.errors import RamerError, first_line, first_of, is_int, unprintable_name, unwritable
from ramer.paths import (
    DATASET_ENTRIES,
    RUN_FILES,
    SPLITS,
    atomic_write_text,
    check_out_folder,
    dataset_folder,
    holding,
    interrupts_held,
    is_plain_name,
    make_folder,
    need_regular_file,
    on_disk,
    read_json,
    remove_temporaries,
    umask,
)
from ramer.version import __version__, version_note

NATIVE_FORMAT = "ramer-native"
NATIVE_VERSION = 2  # 2: feature arrays packed (present rows only); 1: dense, still read
_ARRAYS = (
    "text",
    "audio",
    "visual",
    "present",
    "token_offsets",
    "grid",
    "labels",
    "target",
    "role",
    "person_offsets",
    "character",
)
_OPTIONAL = ("personality", "personality_present", "target_tokens")
_DTYPES = {
    "text": np.float32,
    "audio": np.float32,
    "visual": np.float32,
    "present": np.bool_,
    "token_offsets": np.int64,
    "grid": np.int32,
    "labels": np.uint8,
    "target": np.int32,
    "role": np.int8,
    "person_offsets": np.int64,
    "character": np.int32,
    "personality": np.float32,
    "personality_present": np.bool_,
    "target_tokens": np.bool_,
}
# What each array may hold in memory (numpy dtype kinds), checked where a store is made without
# reading a value; a save casts it to its type in ``_DTYPES``.
_KINDS = {
    **dict.fromkeys(("text", "audio", "visual", "personality"), ("fiu", "real numbers")),
    **dict.fromkeys(("present", "personality_present", "target_tokens"), ("b", "bool")),
    **dict.fromkeys(("token_offsets", "grid", "target", "role", "person_offsets", "character"), ("iu", "integers")),
    "labels": ("biuf", "numbers 0 or 1"),
}
# The files of a split folder (what ``SceneStore.save`` writes): a folder holding only these may be
# written over; anything else in it is the user's.
_SPLIT_FILES = frozenset({f"{name}.npy" for name in _ARRAYS + _OPTIONAL} | {"ids.json"})


@dataclass
class SceneStore:
    """One split: flat arrays (see module docstring) plus the label names."""

    text: np.ndarray
    audio: np.ndarray
    visual: np.ndarray
    present: np.ndarray
    token_offsets: np.ndarray
    grid: np.ndarray
    labels: np.ndarray
    target: np.ndarray
    role: np.ndarray
    person_offsets: np.ndarray
    character: np.ndarray
    label_names: tuple[str, ...]
    ids: list[str]
    personality: np.ndarray | None = None
    personality_present: np.ndarray | None = None
    target_tokens: np.ndarray | None = None  # (T,) bool: several targets per scene (see module docstring)
    source: str = "<memory>"
    extra: dict = field(default_factory=dict)  # loader statistics (non-finite counts, ...)
    # Packed features (a loaded version-2 folder): modality -> (T,) int64, the row of each token in
    # its (R_m, d_m) array, -1 where it has none. ``None``: dense (T, d_m) arrays. Built at load from
    # the stored presence mask and kept as it is by ``with_missing`` (which only hides tokens).
    feature_rows: dict | None = None

    def __post_init__(self) -> None:
        for name in _DTYPES:  # a list or a tuple becomes an array; an ndarray (a memory map too) stays as it is
            value = getattr(self, name)
            if value is not None and not isinstance(value, np.ndarray):
                try:
                    setattr(self, name, np.asarray(value))
                except (ValueError, TypeError) as e:  # a ragged list
                    raise RamerError(f"{self.source}: {name} is not an array ({first_line(e)})") from None
        if isinstance(self.ids, (tuple, np.ndarray)):
            self.ids = list(self.ids)
        if not isinstance(self.label_names, str):
            self.label_names = tuple(self.label_names)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self, where: str | None = None) -> None:
        """Types, shapes and what is cheap to read (per scene, not per token) must be right; an error
        names ``where`` (default: the store's source), the array and the problem. Runs where a store
        is made and again on save; the features themselves are read by ``check``."""
        where = where or self.source

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise RamerError(f"{where}: {what}")

        for name, (kinds, what) in _KINDS.items():
            arr = getattr(self, name)
            if arr is None and name in _OPTIONAL:
                continue
            need(isinstance(arr, np.ndarray), f"{name} is {_kind(arr)}, expected a numpy array")
            need(
                arr.dtype.kind in kinds,
                f"{name} has dtype {arr.dtype}, expected {what}"
                + ("" if what == "bool" else f" (stored as {np.dtype(_DTYPES[name])})"),
            )
        names = self.label_names
        if (what := f"is {_kind(names)}" if isinstance(names, str) else _not_strings(list(names))) is not None:
            need(False, f"label_names {what}, expected a list of strings (the label names)")
        if (odd := unprintable_name(self.label_names)) is not None:
            need(False, f"label_names {odd}")
        if (twice := first_repeat(self.label_names)) is not None:
            need(False, f"label_names names '{twice}' twice; each label needs its own name")
        if (what := _not_strings(self.ids)) is not None:
            need(False, f"ids {what}, expected a list of strings (one sample id per scene)")
        packed = self.feature_rows
        if packed is not None:
            need(
                isinstance(packed, dict) and set(packed) == set(MODALITIES),
                f"feature_rows must map each of {', '.join(MODALITIES)} to a row map",
            )
        for name, shape in (("grid", "(n, 2)"), ("present", "(T, 3)")):  # their lengths count scenes and tokens
            need(getattr(self, name).ndim == 2, f"{name} has shape {getattr(self, name).shape}, expected {shape}")
        n, T = len(self.grid), len(self.present)  # the tokens, whichever way the features are held
        need(self.grid.ndim == 2 and self.grid.shape[1] == 2, f"grid has shape {self.grid.shape}, expected (n, 2)")
        need(
            self.token_offsets.shape == (n + 1,),
            f"token_offsets has shape {self.token_offsets.shape}, expected ({n + 1},)",
        )
        need(
            self.person_offsets.shape == (n + 1,),
            f"person_offsets has shape {self.person_offsets.shape}, expected ({n + 1},)",
        )
        for m in MODALITIES:
            arr = getattr(self, m)
            if packed is None:
                need(arr.ndim == 2 and len(arr) == T, f"{m} has shape {arr.shape}, expected ({T}, d)")
                continue
            at = packed[m]
            need(
                isinstance(at, np.ndarray) and at.shape == (T,) and at.dtype == np.int64,
                f"feature_rows['{m}'] is not an int64 array of shape ({T},)",
            )
            R = int(at.max()) + 1 if T else 0  # rows ascend with the tokens: the last row is the largest
            need(arr.ndim == 2 and len(arr) == R, f"{m} has shape {arr.shape}, expected ({R}, d) (packed)")
            if self.present.ndim == 2 and self.present.shape == (T, 3):
                unstored = int((np.asarray(self.present[:, MODALITIES.index(m)]) & (at < 0)).sum())
                need(
                    not unstored,
                    f"{m} is present at {unstored} tokens whose features are not stored (packed: a "
                    "changed presence mask may only hide tokens)",
                )
        need(self.present.shape == (T, 3), f"present has shape {self.present.shape}, expected ({T}, 3)")
        need(
            self.labels.ndim == 2 and self.labels.shape == (n, len(self.label_names)),
            f"labels has shape {self.labels.shape}, expected ({n}, {len(self.label_names)})",
        )
        need(self.target.shape == (n, 2), f"target has shape {self.target.shape}, expected ({n}, 2)")
        need(self.role.shape == (n,), f"role has shape {self.role.shape}, expected ({n},)")
        need(len(self.ids) == n, f"{len(self.ids)} ids for {n} scenes")
        if n:
            labels = np.asarray(self.labels)
            bad = (labels > 1) if labels.dtype.kind in "bu" else (labels != 0) & (labels != 1)  # NaN too
            rows = np.flatnonzero(bad.any(1))
            if len(rows):
                value = str(labels[rows[0]][bad[rows[0]]][0])  # as numpy prints it: 0.6 in float32 too
                need(False, f"labels row {rows[0]} holds {value}; expected 0 or 1 (multi-hot)")
            rows = np.flatnonzero(~np.isin(self.role, (ROLE_NONE, ROLE_NONSPEAKER, ROLE_SPEAKER)))
            if len(rows):
                need(
                    False,
                    f"role row {rows[0]} is {self.role[rows[0]]}; expected 1 (speaker), 0 (non-speaker) or -1 (none)",
                )
            if (twice := first_repeat(self.ids)) is not None:
                need(False, f"sample id '{twice}' names two scenes; ids must be unique")
            sizes = self.grid[:, 0].astype(np.int64) * self.grid[:, 1]
            need(bool((self.grid > 0).all()), "grid has a scene with no persons or no segments")
            need(
                bool((np.diff(self.token_offsets) == sizes).all())
                and self.token_offsets[-1] == T
                and self.token_offsets[0] == 0,
                "token_offsets do not match grid sizes P*S",
            )
            need(
                bool((np.diff(self.person_offsets) == self.grid[:, 0]).all()) and self.person_offsets[0] == 0,
                "person_offsets do not match grid persons P",
            )
            # a target is (-1, -1) (whole sample) or a (person, segment) inside the scene's grid
            tgt = self.target.astype(np.int64)
            ok = (tgt == -1).all(1) | ((tgt >= 0) & (tgt < self.grid)).all(1)
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                (p, s), (P, S) = tgt[i].tolist(), self.grid[i].tolist()
                need(
                    False,
                    f"target row {i} is ({p}, {s}), outside its scene's grid (P, S) = ({P}, {S}); expected "
                    "0 <= person < P and 0 <= segment < S, or (-1, -1) for no target (whole sample)",
                )
            # role is the target's role: a whole sample has none (metrics would count it as a speaker's)
            rows = np.flatnonzero((tgt == -1).all(1) & (np.asarray(self.role) != ROLE_NONE))
            if len(rows):
                i = int(rows[0])
                need(
                    False,
                    f"role row {i} is {self.role[i]}, but its target is (-1, -1) (the whole sample); role is the "
                    "target's role (1 speaker, 0 non-speaker), so a sample without a target has role -1",
                )
        Q = int(self.person_offsets[-1]) if n else 0
        need(self.character.shape == (Q,), f"character has shape {self.character.shape}, expected ({Q},)")
        need(
            self.personality is not None or self.personality_present is None,
            "personality_present is given without personality; personality and personality_present must both "
            "be arrays, or both None",
        )
        if self.personality is not None:
            need(
                self.personality.ndim == 2 and len(self.personality) == Q,
                f"personality has shape {self.personality.shape}, expected ({Q}, d)",
            )
            need(
                self.personality_present is not None and self.personality_present.shape == (Q,),
                "personality_present missing or of the wrong shape",
            )
        for name in ("token_offsets", "grid", "target", "person_offsets", "character"):
            arr, stored = getattr(self, name), np.dtype(_DTYPES[name])
            if arr.dtype != stored and arr.size:  # a number its stored type cannot hold would change on save
                low, high = arr.min(), arr.max()
                info = np.iinfo(stored)
                need(
                    low >= info.min and high <= info.max,
                    f"{name} holds {(low if low < info.min else high).item()}, "
                    f"beyond what {stored} (its stored type) holds",
                )
        if self.target_tokens is not None:
            tt = self.target_tokens
            need(tt.shape == (T,), f"target_tokens has shape {tt.shape}, expected ({T},)")
            need(tt.dtype == np.bool_, f"target_tokens has dtype {tt.dtype}, expected bool")
            bad = self.marks_targets() & (np.asarray(self.target) != -1).any(1)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                p, s = np.asarray(self.target[i]).tolist()
                need(
                    False,
                    f"target_tokens marks tokens of scene {i}, whose target row is ({p}, {s}); a scene that "
                    "marks target tokens must have target (-1, -1)",
                )

    # ------------------------------------------------------------------ facts
    def __len__(self) -> int:
        return len(self.grid)

    def __repr__(self) -> str:
        """What the store holds, on one line (a notebook's echo; the arrays are its attributes)."""
        try:  # a store being made (a debugger's echo while validate raises) may lack what this reads
            return (
                f"SceneStore({self.source!r}, {len(self)} samples, {len(self.present)} tokens, "
                f"labels {names_line(self.label_names)}, dims {self.dims})"
            )
        except Exception:
            return f"SceneStore({self.source!r})"

    @property
    def dims(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {m: int(getattr(self, m).shape[1]) for m in MODALITIES}
        out["personality"] = None if self.personality is None else int(self.personality.shape[1])
        return out

    def marks_targets(self) -> np.ndarray:
        """(n,) bool: the scenes that mark target tokens in ``target_tokens`` (none without it)."""
        n = len(self)
        if self.target_tokens is None or n == 0:
            return np.zeros(n, dtype=bool)
        return np.logical_or.reduceat(np.asarray(self.target_tokens), np.asarray(self.token_offsets[:-1]))

    # ------------------------------------------------------------------ variants
    def with_missing(self, rate: float, seed: int) -> "SceneStore":
        """Hide each present modality of each token with extra probability ``rate`` (seeded). Packed
        features keep their rows and ``feature_rows``: the hidden tokens' rows are simply not read."""
        if rate <= 0:
            return self
        rng = np.random.default_rng(seed)
        keep = rng.random(self.present.shape) >= rate
        return dataclasses.replace(self, present=np.asarray(self.present) & keep)

    # ------------------------------------------------------------------ batching
    def collate(self, indices: list[int] | np.ndarray) -> Batch:
        """Pad the scenes ``indices`` (a non-empty list or 1-d array of integers in ``0..n-1``) to one
        grid and build a Batch (no Python loop per token). Only the feature rows of present tokens are
        read; padded slots and absent tokens are 0 without a read (a modality absent from a whole batch,
        as audio and visual of a text-only import, costs no read at all)."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            got = f"shape {idx.shape}" if idx.ndim != 1 or idx.size == 0 else f"dtype {idx.dtype}"
            raise RamerError(f"{self.source}: collate takes a non-empty list of scene indices (integers), got {got}")
        idx = idx.astype(np.int64, copy=False)
        if (low := int(idx.min())) < 0 or (high := int(idx.max())) >= len(self):
            bad = low if low < 0 else high
            raise RamerError(f"{self.source}: scene index {bad} is outside 0..{len(self) - 1}")
        B = len(idx)
        grids = self.grid[idx].astype(np.int64)
        P, S = int(grids[:, 0].max()), int(grids[:, 1].max())
        N = P * S
        # For each scene, the flat source row of every (p, s) slot of the padded grid.
        p_ax = np.arange(P)[None, :, None]
        s_ax = np.arange(S)[None, None, :]
        Pb, Sb = grids[:, 0][:, None, None], grids[:, 1][:, None, None]
        valid = (p_ax < Pb) & (s_ax < Sb)  # (B, P, S)
        src = self.token_offsets[idx][:, None, None] + p_ax * Sb + s_ax
        # The slots of real tokens and their source rows, sorted by row: reading sorted rows is much
        # faster on memory maps. Padded slots read nothing.
        slots = np.flatnonzero(valid.reshape(-1))
        rows = src.reshape(-1)[slots]
        order = np.argsort(rows, kind="stable")
        slots, rows = slots[order], rows[order]
        valid = valid.reshape(B, N)
        pres = np.zeros((B * N, 3), dtype=bool)
        pres[slots] = self.present[rows]
        feats = {}
        for k, m in enumerate(MODALITIES):  # present rows only: 0 elsewhere (what lies under False may be NaN)
            arr = getattr(self, m)
            x = np.zeros((B * N, arr.shape[1]), dtype=np.float32)
            keep = pres[slots, k]
            if keep.all():
                x[slots] = arr[self._rows(m, rows)]
            elif keep.any():  # a modality absent from the whole batch (a text-only corpus) reads nothing
                x[slots[keep]] = arr[self._rows(m, rows[keep])]
            feats[m] = x.reshape(B, N, -1)
        pres = pres.reshape(B, N, 3)
        tgt = self.target[idx].astype(np.int64)
        target = np.where(tgt[:, 0] >= 0, tgt[:, 0] * S + tgt[:, 1], -1)
        person = np.broadcast_to(np.repeat(np.arange(P), S)[None], (B, N))
        segment = np.broadcast_to(np.tile(np.arange(S), P)[None], (B, N))
        scope = valid & np.where(target[:, None] >= 0, person == tgt[:, :1], True)
        if self.target_tokens is not None:  # scenes with several targets: scope = their target tokens
            marked = np.zeros(B * N, dtype=bool)
            marked[slots] = self.target_tokens[rows]
            marked = marked.reshape(B, N)
            several = marked.any(1)
            scope = np.where(several[:, None], marked, scope)
            target = np.where(several, -1, target)
        personality = personality_present = None
        if self.personality is not None:
            d = self.personality.shape[1]
            pvalid = np.arange(P)[None, :] < grids[:, :1]  # (B, P)
            prow = np.where(pvalid, self.person_offsets[idx][:, None] + np.arange(P)[None, :], 0).reshape(-1)
            personality = np.asarray(self.personality[prow], dtype=np.float32).reshape(B, P, d)
            personality_present = np.asarray(self.personality_present[prow]).reshape(B, P) & pvalid
            np.copyto(personality, 0.0, where=~personality_present[..., None])
        t = torch.from_numpy
        return Batch(
            features={m: t(feats[m]) for m in MODALITIES},
            present={m: t(np.ascontiguousarray(pres[..., k])) for k, m in enumerate(MODALITIES)},
            valid=t(valid),
            person=t(person.copy()),
            segment=t(segment.copy()),
            grid=(P, S),
            target=t(target),
            scope=t(scope),
            personality=None if personality is None else t(personality),
            personality_present=None if personality_present is None else t(personality_present),
            labels=t(np.asarray(self.labels[idx], dtype=np.float32)),
            role=t(np.asarray(self.role[idx], dtype=np.int64)),
            label_names=self.label_names,
            ids=[self.ids[i] for i in idx],
        )

    # ------------------------------------------------------------------ feature rows
    @property
    def packed(self) -> bool:
        """Whether the features are packed (present rows only, ``feature_rows``), as loaded from a
        version-2 folder; else dense ``(T, d_m)`` arrays."""
        return self.feature_rows is not None

    def _rows(self, m: str, tokens: np.ndarray) -> np.ndarray:
        """The rows of modality ``m``'s array that hold the features of ``tokens`` (present there):
        the tokens themselves when dense, their rows when packed (ascending with the tokens)."""
        if self.feature_rows is None:
            return tokens
        rows = self.feature_rows[m][tokens]
        if (rows < 0).any():
            raise RamerError(
                f"{self.source}: {m} is present at a token whose features are not stored (packed features: "
                "a changed presence mask may only hide tokens)"
            )
        return rows

    def _feature_chunks(self, m: str, present_only: bool):
        """The features of modality ``m`` as float32 C-contiguous chunks in token order, never the
        whole array at once: the rows of the tokens where ``present`` marks it (``present_only``:
        what a save packs), or its dense ``(T, d_m)`` form with +0.0 at every other token (what a
        batch reads: a dense store and the packed one it saves give the same bytes, whatever the
        dense one held under a False mask)."""
        arr, k = getattr(self, m), MODALITIES.index(m)
        for start in range(0, len(self.present), _SCAN_ROWS):
            stop = min(start + _SCAN_ROWS, len(self.present))
            if not present_only:
                yield self.token_features(m, start, stop)
                continue
            rows = self._rows(m, start + np.flatnonzero(np.asarray(self.present[start:stop, k])))
            with np.errstate(over="ignore"):  # a float64 beyond float32's range is inf once stored
                yield np.ascontiguousarray(_read_rows(arr, rows), dtype=np.float32)

    def token_features(self, m: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """The features of modality ``m`` at tokens ``start..stop-1`` (default: to the last) as a
        batch holds them: ``(stop - start, d_m)`` float32, +0.0 where ``m`` is absent, from dense or
        packed arrays alike (only present rows are read); read-only where it is the store's own memory."""
        arr, k = getattr(self, m), MODALITIES.index(m)
        start, stop, _ = slice(start, stop).indices(len(self.present))
        stop = max(start, stop)
        has = np.asarray(self.present[start:stop, k])
        with np.errstate(over="ignore"):  # a float64 beyond float32's range is inf once stored
            if self.feature_rows is None and has.all():
                out = np.ascontiguousarray(arr[start:stop], dtype=np.float32).view()
                out.flags.writeable = False  # a view of the store's array (a copy only when cast)
                return out
            out = np.zeros((stop - start, arr.shape[1]), dtype=np.float32)
            out[has] = _read_rows(arr, self._rows(m, start + np.flatnonzero(has)))
        return out

    def first_present_rows(self, m: str, count: int) -> np.ndarray:
        """The features of the first ``count`` tokens (or fewer) where modality ``m`` is present,
        ``(<= count, d_m)`` in the array's dtype, read without a pass over the whole array."""
        k, found, total = MODALITIES.index(m), [], 0
        for start in range(0, len(self.present), _SCAN_ROWS):
            if total >= count:
                break
            tokens = start + np.flatnonzero(np.asarray(self.present[start : start + _SCAN_ROWS, k]))[: count - total]
            found.append(tokens)
            total += len(tokens)
        tokens = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        return np.asarray(getattr(self, m)[self._rows(m, tokens)])

    # ------------------------------------------------------------------ native format
    def _stored_arrays(self, layout: str = "dense"):
        """(name, shape, chunks) of each array the native format writes, in that order: its bytes are
        the chunks (each C-contiguous, in its stored type) one after the other. The features in
        ``layout``: ``dense``, ``(T, d_m)`` with +0.0 where absent (what ``fingerprint`` hashes);
        ``packed``, the rows of present tokens (what a save writes); ``held``, as this store holds
        them (what ``held_fingerprint`` hashes)."""
        names = _ARRAYS + (("personality", "personality_present") if self.personality is not None else ())
        names += ("target_tokens",) if self.target_tokens is not None else ()
        for name in names:
            if name not in MODALITIES:
                array = np.ascontiguousarray(getattr(self, name), dtype=_DTYPES[name])
                yield name, array.shape, iter((array,))
            elif layout == "held":
                arr = getattr(self, name)
                rows = range(0, len(arr), _SCAN_ROWS)
                yield name, arr.shape, (np.ascontiguousarray(arr[i : i + _SCAN_ROWS], dtype=np.float32) for i in rows)
            else:
                packed = layout == "packed"
                k, d = MODALITIES.index(name), getattr(self, name).shape[1]
                R = int(np.asarray(self.present[:, k]).sum(dtype=np.int64)) if packed else len(self.present)
                yield name, (R, d), self._feature_chunks(name, present_only=packed)

    def fixed(self) -> bool:
        """Whether no array of this store can change under it: each is read-only, and so is every array
        it is a view of (a split read from a folder, memory-mapped read-only). A store of arrays made in
        memory is not: their owner may change them in place (``store.text *= 100`` in a notebook),
        so what is computed from its values (``fingerprint``, ``values_checked``) is not kept."""
        arrays = [getattr(self, name) for name in _DTYPES] + list((self.feature_rows or {}).values())
        for array in arrays:
            while isinstance(array, np.ndarray):
                if array.flags.writeable:
                    return False
                array = array.base
        return True

    def _hash(self, layout: str) -> str:
        """A BLAKE2b hash of the labels, ids and every array of ``_stored_arrays(layout)``, chunk by
        chunk (the same digest as of each array whole), computed once per layout where the store is
        ``fixed``, else at each call. Not a field: a changed copy (``dataclasses.replace``) hashes anew."""
        key = f"_hash_{layout}"
        if key in self.__dict__ and self.fixed():
            return self.__dict__[key]
        h = hashlib.blake2b(digest_size=16)
        h.update(json.dumps([list(self.label_names), list(self.ids)]).encode())
        for name, shape, chunks in self._stored_arrays(layout):
            h.update(f"{name}{shape}".encode())
            for chunk in chunks:
                h.update(chunk)  # any C-contiguous array, an empty one too
        self.__dict__[key] = h.hexdigest()
        return self.__dict__[key]

    def fingerprint(self) -> str:
        """A hash of everything this split holds (labels, ids, every array in its stored type, the
        features in their dense ``(T, d_m)`` form with +0.0 where a modality is absent: a packed
        store hashes as the dense one it was saved from): a run records it, and the same split read
        again later is compared with it. Computed once where the store is ``fixed``."""
        return self._hash("dense")

    def held_fingerprint(self) -> str | None:
        """The hash runs recorded before format version 2 (``fingerprint`` as it was): every array as
        this store holds it, the features included under a False presence mask (the embedded
        benchmark holds -0.0 there). A split is the data a run recorded when either hash matches
        (``checkpoint.changed_splits``). ``None`` for a packed store, which holds no absent rows."""
        return None if self.feature_rows is not None else self._hash("held")

    def check(self, where: str | None = None) -> None:
        """Read every value: ``validate``, then every feature of a present row must be a finite number
        (as float32, the type it is stored and batched in). What a save checks before it writes and
        ``load_native`` checks of a native folder; call it before training on a store made in memory.
        It reads the features once. An error names ``where`` (default: the store's source), the array and the count."""
        self.validate(where)
        if (found := non_finite_features(self)) is not None:
            said = non_finite_message(found[1], beyond_float32(self, found[0]))
            raise RamerError(f"{where or self.source}: {found[0]} {said}")
        self.mark_checked()

    def mark_checked(self) -> None:
        """Record that this store's values passed ``check`` (or a loader made them finite and 0/1):
        ``DataBundle.check`` reads a ``fixed`` store only once (a store of arrays made in memory, at
        each call). Not a field: ``dataclasses.replace`` (a store made from this one with other
        arrays) starts unchecked."""
        self.__dict__["_values_checked"] = True

    @property
    def values_checked(self) -> bool:
        return self.__dict__.get("_values_checked", False) and self.fixed()

    def save(self, directory: str | Path) -> None:
        """Write this split's arrays as ``.npy`` files (atomically: a temporary folder, then renamed).
        ``directory`` must be new, empty or a split folder written before (written over); a folder
        holding anything else, or values that ``check`` refuses, are errors before anything is written."""
        directory = Path(directory).absolute()  # "." has no name to put the temporary folder beside
        self._check_save(directory)
        self._write(directory)

    def _check_save(self, directory: Path, where: str | None = None) -> None:
        """What ``save`` checks before it writes anything (``where`` names the store in errors)."""
        _split_folder(directory)
        self.check(where)

    def _write(self, directory: Path) -> None:
        """``save``'s writing: the arrays into a temporary folder beside ``directory``, which then takes
        its place. What the system refuses (a full disk, permissions) is a RamerError naming the file;
        while the arrays are written a split folder there before is left as it was, and in the swap
        that follows the new one is kept in its temporary folder."""
        writing = directory
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            for old in _split_leftovers(directory):
                if old.is_dir():
                    shutil.rmtree(old)
            # a name of its own beside the target: two writers never share one (a cut-off one is ignored)
            tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
        except OSError as e:
            raise unwritable(directory, e) from None
        try:
            os.chmod(tmp, 0o777 & ~umask())  # as a plain mkdir makes it (mkdtemp makes it private)
            for name, shape, chunks in self._stored_arrays("packed"):
                writing = directory / f"{name}.npy"
                with open(tmp / f"{name}.npy", "wb") as f:  # as np.save writes it, a chunk at a time
                    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(_DTYPES[name])), "fortran_order": False}
                    np.lib.format.write_array_header_1_0(f, {**header, "shape": shape})
                    for chunk in chunks:
                        f.write(chunk.data)
                    on_disk(f)  # before meta.json, which marks the dataset complete
            writing = directory / "ids.json"
            with open(tmp / "ids.json", "w", encoding="utf-8") as f:
                f.write(json.dumps(list(self.ids)))
                on_disk(f)  # before meta.json, which marks the dataset complete
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise unwritable(writing, e) from None
            raise
        try:
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        except OSError as e:
            raise unwritable(directory, e) from None

    @classmethod
    def load(
        cls, directory: str | Path, label_names: tuple[str, ...], mmap: bool = True, version: int | None = None
    ) -> "SceneStore":
        """The split folder ``directory`` as ``save`` wrote it (``version`` of the native format, from
        ``meta.json``: 2 packed features, 1 dense; ``None``: told by the files, a feature file of a row
        per token being dense), memory-mapped unless ``mmap`` is False."""
        directory = Path(directory)
        arrays = {}
        for name in _ARRAYS + _OPTIONAL:
            path = directory / f"{name}.npy"
            need_regular_file(path)
            if not path.exists():
                if name in _OPTIONAL:
                    continue
                raise RamerError(f"{directory}: missing array file {path.name}")
            try:
                arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise RamerError(f"{path}: not a readable .npy array ({e})") from None
            except (tokenize.TokenError, SyntaxError):  # numpy tokenizes the header, a Python dict literal
                raise RamerError(f"{path}: not a readable .npy array (its header is damaged)") from None
            if arr.dtype != _DTYPES[name]:
                raise RamerError(f"{path}: dtype {arr.dtype}, expected {np.dtype(_DTYPES[name])}")
            arrays[name] = arr
        need_regular_file(directory / "ids.json")
        ids = read_json(directory / "ids.json")
        if (what := _not_strings(ids)) is not None:
            raise RamerError(f"{directory / 'ids.json'}: {what}, expected a list of strings (one sample id per scene)")
        if version is None:  # a split folder on its own: dense when every feature file has a row per token
            T = len(arrays["present"]) if arrays["present"].ndim else -1
            version = 1 if all(len(arrays[m]) == T for m in MODALITIES if arrays[m].ndim) else 2
        rows = _feature_rows(directory, arrays) if version >= 2 else None
        for arr in [*arrays.values(), *(rows or {}).values()]:  # read-only, as the files: the store is fixed
            arr.flags.writeable = False
        return cls(**arrays, ids=ids, label_names=label_names, source=str(directory), feature_rows=rows)


@dataclass
class DataBundle:
    """The splits of one dataset plus what describes them: ``splits`` (name -> SceneStore; training
    needs ``train``, ``valid`` and ``test``), ``label_names`` (every split's, in their column order),
    ``format`` (where the data came from: a loader's name from ``formats.FORMATS``, ``conversations``
    for an import, or any other name for data made in memory), ``source`` (what error messages name:
    a path, or a description), ``info`` (what the loader counted, JSON-safe) and ``task``
    (``multi_label`` or ``single_label``: what a label row means)."""

    splits: dict[str, SceneStore]
    label_names: tuple[str, ...]
    format: str
    source: str
    info: dict = field(default_factory=dict)  # e.g. the synthetic oracle's predictions
    task: str = "multi_label"  # one of config.TASKS: what a label row means (resolve_task)

    def __post_init__(self) -> None:
        if not isinstance(self.label_names, str):
            self.label_names = tuple(self.label_names)
        self.validate()

    def validate(self) -> None:
        """What a bundle must be, checked where it is made and again on save, without reading a
        feature: ``splits`` a non-empty dict of SceneStores under folder names, each with the bundle's
        ``label_names`` in its order and the same feature sizes; ``task`` one of ``TASKS``."""
        where, splits = self.source, self.splits
        if not isinstance(splits, dict) or not splits:
            raise RamerError(
                f"{where}: splits is {'an empty dict' if isinstance(splits, dict) else _kind(splits)}, expected a dict "
                "mapping split names to SceneStores, e.g. {'train': ..., 'valid': ..., 'test': ...}"
            )
        first = None
        for name, store in splits.items():
            if not is_plain_name(name):
                raise RamerError(f"{where}: split name {name!r} is not a folder name such as 'train'")
            if name.endswith(".tmp") or (name in DATASET_ENTRIES and name not in SPLITS):
                raise RamerError(
                    f"{where}: split name {name!r} is one a dataset folder keeps for itself (meta.json, cache, *.tmp)"
                )
            if not isinstance(store, SceneStore):
                raise RamerError(f"{where}: split '{name}' is {_kind(store)}, expected a SceneStore")
            if store.label_names != self.label_names:
                raise RamerError(
                    f"{where}: split '{name}' has label_names {list(store.label_names)}, the bundle "
                    f"{_names(self.label_names)}; a split's label columns must be the bundle's label_names, in order"
                )
            first = first or name
            for m, d in store.dims.items():
                if d != (d0 := splits[first].dims[m]):
                    raise RamerError(
                        f"{where}: split '{name}' has {m} size {_size(d)}, but {_size(d0)} in split '{first}'; "
                        "every split must have the same feature sizes"
                    )
        if self.task not in TASKS:
            raise RamerError(f"{where}: task is {self.task!r}, expected {' or '.join(TASKS)}")
        if not isinstance(self.info, dict):
            raise RamerError(f"{where}: info is {_kind(self.info)}, expected a dict (written to meta.json)")

    def check(self) -> None:
        """Read every value of every split (``SceneStore.check``; an error names the split): what a
        save checks, and ``load_native`` checks of a native folder. Training calls it; a split checked
        before whose arrays cannot change since (``SceneStore.values_checked``) is not read again."""
        self.validate()
        for name, store in self.splits.items():
            if not store.values_checked:
                store.check(f"{self.source}, split '{name}'")

    @property
    def dims(self) -> dict[str, int | None]:
        return next(iter(self.splits.values())).dims

    def __repr__(self) -> str:
        """The bundle on one line: its splits' sizes, labels and task (a notebook's echo)."""
        try:
            sizes = ", ".join(f"{name}: {len(store)}" for name, store in self.splits.items())
            return (
                f"DataBundle({self.source!r}, format {self.format!r}, splits {{{sizes}}}, "
                f"labels {names_line(self.label_names)}, task {self.task!r})"
            )
        except Exception:
            return f"DataBundle({self.source!r})"

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities present at some token of some split (an import without media: text)."""
        return tuple(
            m
            for k, m in enumerate(MODALITIES)
            if any(np.asarray(st.present)[:, k].any() for st in self.splits.values())
        )

    @property
    def labelled(self) -> bool:
        """Whether the data has annotations: an unlabelled import records it (its label rows are all
        0); every other source is labelled."""
        if self.format == "conversations":
            return bool(self.info.get("conversations", {}).get("labelled", True))
        return True

    def _single_label_problem(self) -> str | None:
        """Why this bundle cannot be saved as ``single_label`` (a sample of no label or of two or more,
        counted as training counts them: ``label_count_problem``), naming the first; ``None`` where
        every sample has one label, for multi-label data, and for an unlabelled import (all 0)."""
        if self.task != "single_label" or not self.labelled or (found := single_label_problem(self)) is None:
            return None
        return (
            f"{self.source}: task is single_label, which needs exactly one label per sample; {found[0]} (the "
            f"first: {found[1]}); give each sample one label, or save with task='multi_label'"
        )

    def fingerprints(self) -> dict[str, str]:
        """Each split's ``SceneStore.fingerprint``: what a run records of the data it was made on."""
        return {name: store.fingerprint() for name, store in self.splits.items()}

    def save(self, directory: str | Path) -> None:
        """Write the bundle as a native directory (``docs/DATA.md``): a folder per split, then
        ``meta.json``. ``directory`` follows the rule of a dataset ``--out`` (``paths.dataset_folder``):
        new, empty or a dataset written before (written over; files of the user's beside it stay).
        A folder holding anything else, a split folder holding files a save does not write, a split
        that ``SceneStore.check`` refuses and labelled ``single_label`` data where a sample has no
        label or two or more are errors before anything is written or deleted."""
        self.validate()
        directory = _dataset_folder(Path(directory))
        try:
            json.dumps(self.info)
        except (TypeError, ValueError) as e:
            raise RamerError(f"{self.source}: info cannot be written to meta.json ({first_line(e)})") from None
        for name, store in self.splits.items():
            store._check_save(directory / name, f"{self.source}, split '{name}'")
        if (problem := self._single_label_problem()) is not None:
            raise RamerError(problem)
        make_folder(directory)
        with staged_dataset(directory) as staging:  # the dataset there stays whole until the last split is written
            for name, store in self.splits.items():
                store._write(staging / name)
            write_meta(
                staging,
                self.format,
                self.label_names,
                self.dims,
                {name: len(s) for name, s in self.splits.items()},
                self.info,
                self.task,
            )


def _feature_rows(directory: Path, arrays: dict) -> dict[str, np.ndarray]:
    """The token -> row map of each packed feature array of the split folder ``directory`` (a
    cumulative count of its presence mask), each array's row count checked against it."""
    present = arrays["present"]
    if present.ndim != 2 or present.shape[1] != 3:
        raise RamerError(f"{directory}: present has shape {present.shape}, expected (T, 3)")
    out = {}
    for k, m in enumerate(MODALITIES):
        out[m] = row_map(np.asarray(present[:, k]))
        R, arr = int(out[m].max(initial=-1)) + 1, arrays[m]
        if arr.ndim != 2 or len(arr) != R:
            raise RamerError(
                f"{directory / (m + '.npy')}: has shape {arr.shape}, but present.npy marks {m} present at {R} "
                f"tokens; a packed feature file (version 2) holds one row per present token, ({R}, d)"
            )
    return out


def row_map(has: np.ndarray) -> np.ndarray:
    """The token -> row map of a packed feature array whose rows are the tokens where ``has`` (a
    ``(T,)`` bool mask) is True, in token order: ``(T,)`` int64, -1 where the token has no row."""
    count = np.cumsum(has, dtype=np.int64)
    return np.where(has, count - 1, -1)


def _read_rows(arr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``arr[rows]`` for ascending ``rows``: a run of consecutive rows (a packed array read in token
    order) is one slice of a memory map, not a gather."""
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return arr[rows[0] : rows[-1] + 1]
    return arr[rows]


def label_count_problem(counts: np.ndarray) -> str | None:
    """For single-label data: what is wrong with the per-sample label counts ``counts`` (n,), as
    ``"3 of 40 samples break it: 2 have no label and 1 has 2 or more"``; ``None`` when every one is 1."""
    counts = np.asarray(counts)
    none, many = int((counts == 0).sum()), int((counts > 1).sum())
    if none == 0 and many == 0:
        return None
    verb = lambda k: "has" if k == 1 else "have"  # noqa: E731
    parts = ([f"{none} {verb(none)} no label"] if none else []) + ([f"{many} {verb(many)} 2 or more"] if many else [])
    return f"{none + many} of {len(counts)} samples break it: " + " and ".join(parts)


def not_one_label(labels: np.ndarray, split: str) -> str | None:
    """Why a single-label run's figures on ``labels`` (n, C) of split ``split`` would not mean what they
    say (``ramer eval`` refuses them, ``ramer view`` leaves them out), as "split 'test' does not give
    one label per sample (...)"; ``None`` where every sample has one label."""
    problem = label_count_problem(np.asarray(labels).sum(1))
    return None if problem is None else f"split '{split}' does not give one label per sample ({problem})"


def resolve_task(bundle: DataBundle, requested: str = "auto") -> str:
    """The task of a run on ``bundle``: ``requested`` (``data.task``), or for ``auto`` what the data
    records (``bundle.task``). Single-label is checked: every sample of every split must have
    exactly one label, else a RamerError names the data and how many samples break it."""
    if requested not in ("auto", *TASKS):
        raise RamerError(f"data.task is '{requested}', expected auto, {' or '.join(TASKS)}")
    task = bundle.task if requested == "auto" else requested
    if task == "single_label" and (found := single_label_problem(bundle)) is not None:
        why = "data.task=single_label" if requested == "single_label" else "it is recorded as single_label"
        raise RamerError(
            f"{bundle.source}: {why}, which needs exactly one label per sample; {found[0]} (use data.task=multi_label)"
        )
    return task


def single_label_problem(bundle: DataBundle) -> tuple[str, str] | None:
    """Where ``bundle``'s samples do not each hold exactly one label: ``label_count_problem`` of every
    split's counts, and the first such sample (``"split 'train', row 3, 2 labels"``); None where each does."""
    counts = {name: np.asarray(s.labels).sum(1, dtype=np.int64) for name, s in bundle.splits.items()}
    problem = label_count_problem(np.concatenate([np.zeros(0, np.int64), *counts.values()]))
    if problem is None:
        return None
    split, row = next((name, int(np.flatnonzero(c != 1)[0])) for name, c in counts.items() if (c != 1).any())
    return problem, f"split '{split}', row {row}, {counts[split][row]} labels"


def write_meta(
    directory: Path,
    source_format: str,
    label_names,
    dims: dict,
    splits: dict[str, int],
    info: dict,
    task: str = "multi_label",
) -> dict:
    """Write ``meta.json`` of a native directory atomically (after its split folders) and return it."""
    meta = {
        "format": NATIVE_FORMAT,
        "version": NATIVE_VERSION,
        "ramer_version": __version__,  # named in the errors of a later ramer's reader
        "source_format": source_format,
        "label_names": list(label_names),
        "task": task,
        "dims": dims,
        "splits": splits,
        "info": info,
    }
    atomic_write_text(Path(directory) / "meta.json", json.dumps(meta, indent=1))  # a temporary name of its own
    remove_temporaries(directory, ("meta.json",))  # what a write killed before left
    return meta


# The prefix of the staging folder a dataset write makes inside its folder (``staged_dataset``), and
# the one ``data convert`` of earlier versions made: a folder so named that a kill left is removed.
_STAGING = ".dataset."
_STAGED_BEFORE = (_STAGING, ".convert.")
_OLD = "old.tmp"  # in a staging folder: the entries swapped out (no split is named *.tmp)


@contextlib.contextmanager
def staged_dataset(directory: Path, replaces: tuple[str, ...] = ()) -> Iterator[Path]:
    """A staging folder inside the dataset folder ``directory`` (made) to write a whole dataset into:
    its split folders, then ``meta.json`` (``write_meta``). When the context ends without an error
    the staged entries are swapped in (``_swap_in``; old split folders named in ``replaces`` that the
    new dataset lacks go too); an error or an interrupt before that leaves the dataset in
    ``directory`` as it was. The staging folder is removed either way; one a kill left behind is
    removed by the next write of a command that holds ``directory`` (``hold``)."""
    if holding(directory):
        for prefix in _STAGED_BEFORE:
            for stale in directory.glob(f"{prefix}*.tmp"):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=_STAGING, suffix=".tmp", dir=directory))
    except OSError as e:
        raise unwritable(directory, e) from None
    try:
        yield staging
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, RamerError) and str(e).startswith(f"{staging}{os.sep}"):  # a file it could not write
            said = f"{directory}{str(e)[len(str(staging)) :]}; the dataset there is as it was"
            raise RamerError(said) from None
        raise
    # written: the swap is its commit, so Ctrl-C is held off from the swap to the end of the clean-up
    # after it, then raised (a Ctrl-C while the old dataset, moved into the staging folder, was being
    # removed said "interrupted" of a dataset replaced as if it were not, and left part of the old one)
    with interrupts_held(f"{directory} holds the dataset just written, whole"):
        try:
            swapped = _swap_in(directory, staging, replaces)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for name in swapped:
            for old in _split_leftovers(directory / name):
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old, ignore_errors=True)
        remove_temporaries(directory, ("meta.json",))  # what a write of meta.json killed before left


def _swap_in(directory: Path, staging: Path, replaces: tuple[str, ...]) -> list[str]:
    """Move the split folders and ``meta.json`` staged in ``staging`` into ``directory``: the old
    ``meta.json`` out first (a dataset part swapped must not look complete), the old split folders
    out (into ``staging``, removed with it) and the new ones in, ``meta.json`` last. Renames only,
    no copy nor delete: an error among them (or an interrupt, where ``staged_dataset`` cannot hold
    Ctrl-C off: outside the main thread) moves back what was moved, so the old
    dataset is whole again; only a kill (or a power cut) in those few renames leaves it cut off.
    Returns the names of the split folders moved in."""
    staged = [p.name for p in staging.iterdir() if p.is_dir()]
    outgoing = ["meta.json", *staged, *(n for n in replaces if n not in staged)]
    old = staging / _OLD
    old.mkdir()
    done: list[tuple[Path, Path]] = []  # the renames made, to undo in reverse
    try:
        for name in outgoing:
            if os.path.lexists(directory / name):
                os.replace(directory / name, old / name)
                done.append((directory / name, old / name))
        for name in (*staged, "meta.json"):
            os.replace(staging / name, directory / name)
            done.append((staging / name, directory / name))
    except BaseException as e:
        for source, target in reversed(done):
            os.replace(target, source)
        if isinstance(e, OSError):  # permissions (a read-only split folder cannot be moved), a full disk
            said = f"{e.strerror or first_line(e)}: {e.filename}" if e.filename else e.strerror or first_line(e)
            said = f"{directory}: cannot move the new dataset in ({said}); the one there is as it was"
            raise RamerError(said) from None
        raise
    return staged


def is_native(path: str | Path) -> bool:
    return (Path(path) / "meta.json").is_file()


def _kind(value) -> str:
    """The JSON type of ``value`` (a numpy number as the number; another object by its type), for errors."""
    if isinstance(value, np.generic):
        value = value.item()
    kinds = ((bool, "a boolean"), (str, "a string"), ((int, float), "a number"), (list, "a list"), (dict, "an object"))
    return next(
        (
            f"{k} ({json.dumps(value)[:40]})" if k in ("a string", "a number") else k
            for t, k in kinds
            if isinstance(value, t)
        ),
        "null" if value is None else f"a {type(value).__name__}",
    )


def first_repeat(values: Iterable[Hashable]) -> Hashable | None:
    """The first value of ``values`` seen before (``None``: they are unique)."""
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _not_strings(value) -> str | None:
    """What makes ``value`` not a list of strings (``None``: it is one), for errors."""
    if not isinstance(value, list):
        return f"is {_kind(value)}"
    bad = [v for v in value if not isinstance(v, str)]
    return f"holds {_kind(bad[0])}" if bad else None


def _names(value) -> str:
    """``value`` (label names) as a list, for errors."""
    return repr(value) if isinstance(value, str) else str(list(value))


def _size(d: int | None) -> str:
    """A feature size, for errors."""
    return "none (no personality.npy)" if d is None else str(d)


def _holds_a_split(folder: Path) -> bool:
    """Whether ``folder`` is a split folder that ``SceneStore.save`` wrote: ``ids.json`` and arrays only."""
    return (folder / "ids.json").is_file() and all(p.name in _SPLIT_FILES for p in folder.iterdir())


def _split_leftovers(split: Path) -> list[Path]:
    """What saves of the split folder ``split`` cut off left beside it: the fixed ``_tmp_folder``,
    and the temporaries of its own names (``.NAME.XXXX.tmp``) only where this process holds the
    folder, so no other writer's is taken."""
    leftovers = [_tmp_folder(split)]
    if holding(split.parent):
        leftovers += split.parent.glob(f".{split.name}.*.tmp")
    return leftovers


def _tmp_folder(directory: Path) -> Path:
    """The fixed temporary name beside ``directory`` that saves of earlier versions wrote, then
    renamed; one left by a save cut off is removed by the next."""
    return directory.with_name(directory.name + ".tmp")


def _split_folder(directory: Path) -> None:
    """Refuse ``directory`` as the folder of a split to save unless it (and the old temporary folder
    beside it) is new, empty or holds only the files a save writes: those are written over, and
    nothing else is deleted. Checked before anything is written."""
    for folder in (directory, _tmp_folder(directory)):
        check_out_folder(folder)
        if folder.is_symlink():  # written over means removed: a link's target is not ours to remove
            raise RamerError(f"{folder}: is a link; a split folder is written over, so give a folder, not a link")
        if folder.is_dir():
            other = sorted(p.name for p in folder.iterdir() if p.name not in _SPLIT_FILES or not p.is_file())
            if other:
                raise RamerError(
                    f"{folder}: holds {first_of(other, 3)}, which a split folder does not; give a new or empty folder "
                    "(a split folder written before is written over)"
                )


def check_dataset_folder(directory: str | Path) -> Path:
    """What a dataset save into ``directory`` checks of the folders before writing (``DataBundle.save``;
    ``data convert`` and ``data import`` call it before they remove ``meta.json``): the dataset
    folder (``paths.dataset_folder``) and each split folder a save writes (``train``, ``valid``,
    ``test`` and their temporary folders) must hold only what a save wrote."""
    directory = _dataset_folder(Path(directory))
    for split in ("train", "valid", "test"):
        _split_folder(directory / split)
    return directory


def _dataset_folder(directory: Path) -> Path:
    """``paths.dataset_folder`` for ``DataBundle.save``, where a folder without ``meta.json`` that
    holds a split folder a save wrote counts as the dataset it was: a save cut off, or ``data
    convert`` and ``data import``, which remove ``meta.json`` (after their own check) before they
    save. Files of the user's beside it stay; a run's files are refused as ever."""
    try:
        return dataset_folder(directory)
    except RamerError:
        if not save_cut_off(directory) or any((directory / name).exists() for name in RUN_FILES):
            raise
        return directory


def save_cut_off(directory: Path) -> bool:
    """Whether ``directory`` is a dataset whose save was cut off (or is under way): no ``meta.json``,
    which a save writes last, but a split folder a save wrote."""
    return (
        directory.is_dir()
        and not (directory / "meta.json").exists()
        and any(p.is_dir() and _holds_a_split(p) for p in directory.iterdir())
    )


def _written_by(meta: dict) -> str:
    """Which ramer wrote a ``meta.json`` (``ramer_version``, one short line) and which reads it
    (``version_note``, as for a model file), for an error about a value this ramer does not know."""
    written = meta.get("ramer_version")
    if written is None or (isinstance(written, str) and 0 < len(written) <= 64 and written.isprintable()):
        return version_note(written)
    return f"its 'ramer_version' is {_kind(written)}, not a ramer version; this is ramer {__version__}"


def native_source_format(path: str | Path) -> str | None:
    """What the native directory ``path`` was made from (meta.json's ``source_format``: a loader's
    name, ``synthetic``, ``conversations``); None where it records none."""
    value = _read_meta(Path(path)).get("source_format")
    return value if isinstance(value, str) else None


def native_info(path: str | Path) -> dict:
    """The ``info`` of the native directory ``path``'s meta.json: how it was converted ({} where it
    records nothing)."""
    info = _read_meta(Path(path)).get("info")
    return info if isinstance(info, dict) else {}


def _read_meta(path: Path) -> dict:
    """``meta.json`` of the native directory ``path``, its keys checked for type."""
    where = path / "meta.json"
    need_regular_file(where)
    meta = read_json(where)
    if not isinstance(meta, dict) or meta.get("format") != NATIVE_FORMAT:
        raise RamerError(f"{where}: not a {NATIVE_FORMAT} directory")
    for key in ("label_names", "splits"):
        if key not in meta:
            raise RamerError(f"{where}: missing key '{key}'")
    if (what := _not_strings(meta["label_names"])) is not None:
        raise RamerError(f"{where}: 'label_names' {what}, expected a list of strings (the label names)")
    if (odd := unprintable_name(meta["label_names"])) is not None:
        raise RamerError(f"{where}: 'label_names' {odd}")
    if (twice := first_repeat(meta["label_names"])) is not None:
        raise RamerError(f"{where}: 'label_names' names '{twice}' twice; each label needs its own name")
    version = meta.get("version", 1)  # a folder without the key predates packed features
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= NATIVE_VERSION:
        raise RamerError(
            f"{where}: 'version' is {_kind(version)}; this ramer reads native directories up to version "
            f"{NATIVE_VERSION} ({_written_by(meta)})"
        )
    splits = meta["splits"]
    if not isinstance(splits, dict) or not splits:
        what = "an empty object" if isinstance(splits, dict) else _kind(splits)
        raise RamerError(
            f"{where}: 'splits' is {what}, expected an object mapping split names to scene counts, "
            'e.g. {"train": 100, "valid": 10, "test": 10}'
        )
    for name, n in splits.items():
        if not is_plain_name(name):
            raise RamerError(f"{where}: 'splits' names {name!r}, expected a folder name such as 'train'")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise RamerError(f"{where}: 'splits' gives {name!r} {_kind(n)}, expected a scene count (an integer >= 0)")
    if meta.get("task", TASKS[0]) not in TASKS:  # a directory written before the key: multi-label
        raise RamerError(
            f"{where}: 'task' is {_kind(meta['task'])}, expected {' or '.join(json.dumps(t) for t in TASKS)} "
            f"({_written_by(meta)})"
        )
    if not isinstance(meta.get("info", {}), dict):
        raise RamerError(f"{where}: 'info' is {_kind(meta['info'])}, expected an object")
    dims = meta.get("dims")
    if dims is not None and not isinstance(dims, dict):
        raise RamerError(f"{where}: 'dims' is {_kind(dims)}, expected an object of feature sizes")
    for key, d in (dims or {}).items():
        if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 0):
            raise RamerError(f"{where}: 'dims' gives {key!r} {_kind(d)}, expected a size (an integer >= 0) or null")
    if meta.get("source_format") == "conversations":
        _check_import_info(meta, where)
    return meta


def _import_item_problem(item, splits: dict) -> str | None:
    """What makes ``item`` (one conversation of an import's ``info.conversations.items``, which
    ``ramer predict``'s timelines and ``ramer view`` read) unreadable; ``None`` when it is sound."""
    if not isinstance(item, dict):
        return f"is {_kind(item)}, expected an object"
    for key, kind in (
        ("name", str),
        ("split", str),
        ("persons", list),
        ("index", list),
        ("first", int),
        ("targets", list),
    ):
        value = item.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"gives '{key}' {_kind(value)}" if key in item else f"lacks '{key}'"
    if not item["persons"] or _not_strings(item["persons"]) is not None:
        return "gives 'persons' that is not a list of names"
    if (odd := unprintable_name([item["name"], *item["persons"]])) is not None:
        return odd
    if not all(map(is_int, item["index"])):
        return "gives 'index' that is not a list of integers"
    if not all(is_int(t) and 0 <= t < len(item["index"]) for t in item["targets"]):
        return f"gives 'targets' that are not segments of its {len(item['index'])} 'index' values"
    n = splits.get(item["split"])
    if n is not None and not 0 <= item["first"] <= n - len(item["targets"]):
        return (
            f"gives 'first' {item['first']} for {len(item['targets'])} targets, outside split "
            f"'{item['split']}' ({n} samples)"
        )
    return None


def _check_import_info(meta: dict, where: Path) -> None:
    """An imported set's ``info`` as ``ramer predict``, ``eval`` and ``view`` read it (``source_files``,
    ``conversations``: ``labelled`` and each conversation's ``items``): a meta.json edited into
    another shape is an error naming it, not a traceback after the predictions."""
    info = meta.get("info", {})
    files = info.get("source_files", [])
    if (what := _not_strings(files)) is not None:
        raise RamerError(f"{where}: 'info.source_files' {what}, expected a list of file paths")
    conv = info.get("conversations", {})
    if not isinstance(conv, dict):
        raise RamerError(f"{where}: 'info.conversations' is {_kind(conv)}, expected an object")
    if not isinstance(conv.get("labelled", True), bool):
        raise RamerError(f"{where}: 'info.conversations.labelled' is {_kind(conv['labelled'])}, expected true or false")
    items = conv.get("items", [])
    if not isinstance(items, list):
        raise RamerError(f"{where}: 'info.conversations.items' is {_kind(items)}, expected a list of conversations")
    for k, item in enumerate(items):
        if (what := _import_item_problem(item, meta["splits"])) is not None:
            raise RamerError(f"{where}: 'info.conversations.items'[{k}] {what}")


def _check_import_targets(meta: dict, splits: dict[str, SceneStore], where: Path) -> None:
    """Each target of an imported conversation is a person the conversation lists (its row of the
    timeline)."""
    for k, item in enumerate(meta.get("info", {}).get("conversations", {}).get("items", [])):
        store = splits.get(item["split"])
        if store is None or not item["targets"]:
            continue
        first = item["first"]
        persons = np.asarray(store.target[first : first + len(item["targets"]), 0])
        if not ((persons >= 0) & (persons < len(item["persons"]))).all():
            raise RamerError(
                f"{where}: 'info.conversations.items'[{k}] lists {len(item['persons'])} persons, but a target of its "
                f"samples in split '{item['split']}' is another person"
            )


_SCAN_ROWS = 1 << 16  # rows per finiteness scan step: memory-mapped files stay paged out


def _present_values(store: SceneStore):
    """``(input name, chunk)`` for the rows of each feature array, then of ``personality``, where
    they are present, as float32 (the type they are stored and batched in: a float64 beyond
    float32's range is inf), a chunk at a time: memory-mapped files stay paged out."""
    for m in MODALITIES:  # the present rows, packed or dense, as a save writes them
        for chunk in store._feature_chunks(m, present_only=True):
            yield m, chunk
    if store.personality is not None:
        arr, present = store.personality, store.personality_present
        for start in range(0, len(arr), _SCAN_ROWS):
            rows = arr[start : start + _SCAN_ROWS][np.asarray(present[start : start + _SCAN_ROWS])]
            with np.errstate(over="ignore"):
                yield "personality", rows.astype(np.float32, copy=False)


def non_finite_features(store: SceneStore) -> tuple[str, int] | None:
    """The first input of ``store`` (a feature array, personality) that holds NaN or inf in a present
    row (as float32, the type it is stored and batched in), and how many; ``None`` when there is none.
    What lies under a False presence mask is ignored, as the models ignore it (and ``collate`` writes 0
    there)."""
    bad: dict[str, int] = {}
    for name, chunk in _present_values(store):
        bad[name] = bad.get(name, 0) + int((~np.isfinite(chunk)).sum())
    return next(((name, n) for name, n in bad.items() if n), None)


def largest_store_features(store: SceneStore) -> dict[str, float]:
    """The largest magnitude of each input of ``store`` in its present rows (0 where none is), as
    ``batch.largest_features`` gives it for a batch."""
    out = {m: 0.0 for m in MODALITIES}
    for name, chunk in _present_values(store):
        if chunk.size:
            out[name] = max(out.get(name, 0.0), float(np.abs(chunk).max()))
    return out


def beyond_float32(store: SceneStore, name: str) -> int:
    """How many present values of the input ``name`` (a feature array, personality) of ``store`` are
    finite as the store holds them (float64) but beyond float32's range, the type they are stored and
    batched in (inf there). 0 for a float32 array; an integer one never exceeds it. Read on the error
    path only (``SceneStore.check``)."""
    arr = getattr(store, name)
    if arr.dtype == np.float32 or arr.dtype.kind != "f":
        return 0
    if name == "personality":
        present, rows_of = np.asarray(store.personality_present), lambda rows: rows
    else:
        present, k = store.present, MODALITIES.index(name)
        present, rows_of = np.asarray(present[:, k]), lambda rows: store._rows(name, rows)
    count = 0
    for start in range(0, len(present), _SCAN_ROWS):
        rows = rows_of(start + np.flatnonzero(present[start : start + _SCAN_ROWS]))
        raw = np.asarray(arr[rows])
        with np.errstate(over="ignore"):
            count += int((np.isfinite(raw) & ~np.isfinite(raw.astype(np.float32))).sum())
    return count


def non_finite_message(bad: int, beyond: int = 0) -> str:
    """What ``non_finite_features`` found (``bad`` values, of which ``beyond`` are finite numbers
    beyond float32's range: ``beyond_float32``), for an error after the array's name."""
    if not beyond:
        return (
            f"holds {bad} non-finite values (NaN or inf) in present rows; features must be finite numbers "
            "(write 0 for a missing value)"
        )
    nan = f"{bad - beyond} non-finite values (NaN or inf) and " if bad > beyond else ""
    return (
        f"holds {nan}{beyond} values in present rows beyond float32's range (±3.4e38), the type features are "
        "stored and batched in; features must be finite numbers within it (rescale them; write 0 for a missing value)"
    )


def _check_finite(store: SceneStore, directory: Path) -> None:
    """A RamerError naming the first feature file of a split that holds NaN or inf in a present row
    (training on a present NaN would stop later with a loss that is not finite and blame the
    learning rate)."""
    if (found := non_finite_features(store)) is not None:
        raise RamerError(f"{directory / (found[0] + '.npy')}: split '{directory.name}' {non_finite_message(found[1])}")
    store.mark_checked()


def load_native(path: str | Path, mmap: bool = True) -> DataBundle:
    """The native dataset folder ``path`` (``meta.json`` and a folder of ``.npy`` arrays per split,
    docs/DATA.md), every array checked (dtypes, shapes, ids, finite features); ``mmap``: the arrays
    are memory-mapped, read when a batch needs them."""
    path = Path(path)
    meta = _read_meta(path)
    labels = tuple(meta["label_names"])
    given = {k: v for k, v in (meta.get("dims") or {}).items() if k in (*MODALITIES, "personality")}

    splits: dict[str, SceneStore] = {}
    for name, n in meta["splits"].items():
        store = SceneStore.load(path / name, labels, mmap=mmap, version=meta.get("version", 1))
        if len(store) != n:
            raise RamerError(f"{path / name}: {len(store)} scenes, meta.json says {n}")
        _check_finite(store, path / name)
        # feature sizes must agree with meta.json and across splits: a model is built for one set
        for m, d in store.dims.items():
            if m in given and given[m] != d:
                raise RamerError(f"{path / name}: {m} size is {_size(d)}, but meta.json 'dims' says {_size(given[m])}")
            if splits:
                first, d0 = next(iter(splits)), next(iter(splits.values())).dims[m]
                if d != d0:
                    raise RamerError(
                        f"{path / name}: {m} size is {_size(d)}, but {_size(d0)} in split '{first}'; "
                        "every split must have the same feature sizes"
                    )
        splits[name] = store
    if meta.get("source_format") == "conversations":
        _check_import_targets(meta, splits, path / "meta.json")
    return DataBundle(
        splits, labels, meta.get("source_format", "native"), str(path), meta.get("info", {}), meta.get("task", TASKS[0])
    )
