"""MEmoR (multi-party, The Big Bang Theory): the release directory, read as its baseline reads it.

Two protocols (``data.memor_protocol``):

- ``target`` (default): one sample per ``anno.json`` item (clip, target character, moment), as
  MEmoR's baseline builds it (DATA_FORMATS section 5, below);
- ``clip``: one sample per clip and split, as the RAMer authors' code builds it: the annotations of
  the clip listed in that split's id file are gathered, persons = ``sorted(on_character + their
  characters)``, the label is the multi-hot union of their emotions, every annotated (character,
  moment) is a target token (``SceneStore.target_tokens``; target (-1, -1), role -1). A clip whose
  annotations fall into both id files gives a train (or valid) sample and a test sample, each
  from its own annotations. The validation split takes whole clips. Sample ids are ``"{clip}"``.

The sample of ``target`` (a ``clip`` sample differs only where said above):

- persons = ``sorted(on_character + [target])``, segments = the clip's segments; rows are
  person-major (``row = p * S + s``); ``character`` holds each person's id (0..7).
- text (1024) and audio (6373) are present only where the person is the segment's speaker and the
  feature key exists (a missing audio or text key leaves the token absent; both counted). A
  segment whose speaker is none of the persons has its text and audio in no token (counted per
  sample, ``speech_by_non_person``, where either key exists).
- visual = mean face feature of that person over the segment's frames (when more than 10 face
  crops fall there) + mean object + mean environment features; the whole clip's visual is absent
  when the clip has 10 or fewer face images. Frames are counted at 23.976 fps from the clip's
  ``start``; a face belongs to a frame range ``[begin, end]``, object/environment rows to
  ``[begin, end)`` as in the baseline. An object or environment file with fewer rows than a
  present token's range needs gives the mean of the rows there (zeros when none) and is counted
  per clip and table (``visual_clips_with_too_few_object_frames``, ``..._environment_frames``).
- personality: the 118-d row of ``character_features.csv`` of each person, every column
  L2-normalised across the 8 characters (the baseline's ``F.normalize(dim=0)``).
- target = (target person, the segment containing ``moment``: ``start <= moment < end``; when no
  segment contains it, the nearest one, counted); role = 1 when the target person speaks in that
  segment, else 0.
- labels: the union of the emotions of all items sharing (clip, character, moment) in the chosen
  label set (9 primary or 14 fine-grained): mostly one-hot.
- splits: ``train_id.txt`` / ``test_id.txt`` (indices into the ``anno.json`` list; an index listed
  twice, or in both files, is an error); validation = a seeded ``valid_fraction`` of train (of its
  items, or of its clips for ``clip``; the rest stays train, both in file order). ``target`` draws
  whole (clip, character, moment) groups: the items of one group are identical samples (one union
  label), so they stay on one side. The items are walked in the seeded order of the per-item
  draw, each bringing in its group, and the groups reached first are taken, as many as bring the
  share nearest to ``valid_fraction`` (up to one group's size off); with no shared (clip,
  character, moment) this is the per-item draw. Each split
  counts its copies (``duplicate_annotation_samples``: items beyond the first of their group);
  valid and test count their items whose group has an item in train (for test: in train or valid,
  the items of ``train_id.txt``): ``samples_also_in_train``, kept, the same sample on both sides.
  Sample ids are ``"{anno index}:{clip}:{character}"`` (``target``), independent of the split seed.
- text keys: ``"{clip}+{seg_ori_ind}"`` (the released code) or ``"{clip}+{segment index}"`` (the
  other public loader): both are tried over the whole release, the one matching more keys is used
  and reported in ``bundle.info["memor"]``.
"""

from __future__ import annotations

import json
import mmap
import re
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ramer.batch import MODALITIES, ROLE_NONE, ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.data.readers import SplitStream, as_array, as_float32, check_numeric, new_info, whole_number
from ramer.data.safe_load import safe_load
from ramer.data.store import SceneStore
from ramer.errors import RamerError, unreadable
from ramer.paths import is_plain_name, loads_json, need_regular_file, read_json, read_text

CHARACTERS = ("sheldon", "leonard", "howard", "rajesh", "penny", "bernadette", "amy", "others")  # the code's order
PRIMARY = ("neutral", "joy", "anger", "disgust", "sadness", "surprise", "fear", "anticipation", "trust")
FINE_GRAINED = PRIMARY + ("serenity", "interest", "annoyance", "boredom", "distraction")
LABEL_SETS = {"primary": PRIMARY, "fine_grained": FINE_GRAINED}
OTHERS_ALIASES = ("others", "otherswomen", "othersman")
FPS = 23.976
FACE_THRESHOLD = 10  # more than this many face crops are needed (per clip, and per person-segment)
DEFAULT_VISUAL_DIMS = (1024, 1230, 2048)  # face, object, environment
PERSONALITY_DIM = 118
TEXT_KEY_CONVENTIONS = ("seg_ori_ind", "segment_index")
PROTOCOLS = ("target", "clip")


# ------------------------------------------------------------------------------------- JSON vectors
class JsonVectors:
    """A JSON object ``{"key": [numbers], ...}`` (MEmoR's text/audio feature files, gigabytes of
    text) indexed lazily: one pass finds where each list lies, a list is parsed when asked for.
    A file that does not fit that shape is parsed whole with ``json``."""

    _OPEN = re.compile(rb"\s*\{\s*")
    _KEY = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*\[')
    _NEXT = re.compile(rb"\s*(,|\})\s*")

    def __init__(self, path: Path) -> None:
        self.path = path
        _need_file(path)
        try:
            self._fh = open(path, "rb")
        except OSError as e:
            raise unreadable(path, e) from None
        self._buf: Any = b""
        try:
            self._read(path)
        except BaseException:  # the file is not kept open by a reader that was never made
            self.close()
            raise

    def _read(self, path: Path) -> None:
        size = path.stat().st_size
        self._buf = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._parsed: dict | None = None
        self._index = self._scan()
        if self._index is None:
            try:
                parsed = loads_json(bytes(self._buf))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RamerError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(parsed, dict):
                raise RamerError(f"{path}: holds a {type(parsed).__name__}, expected an object key -> list of numbers")
            self._parsed = parsed
            self.close()

    def _scan(self) -> dict[str, tuple[int, int]] | None:
        buf, index = self._buf, {}
        m = self._OPEN.match(buf, 0)
        if not m:
            return None
        pos = m.end()
        if buf[pos : pos + 1] == b"}":
            return index
        while True:
            m = self._KEY.match(buf, pos)
            if not m:
                return None
            raw = m.group(1)
            key = json.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode("utf-8", "replace")
            start = m.end()
            end = buf.find(b"]", start)
            if end < 0 or buf.find(b"[", start, end) >= 0:
                return None
            index[key] = (start, end)
            m = self._NEXT.match(buf, end + 1)
            if not m:
                return None
            pos = m.end()
            if m.group(1) == b"}":
                return index if pos == len(buf) or not buf[pos:].strip() else None

    def __contains__(self, key: str) -> bool:
        return key in (self._parsed if self._parsed is not None else self._index)

    def __len__(self) -> int:
        return len(self._parsed if self._parsed is not None else self._index)

    def get(self, key: str) -> np.ndarray | None:
        """The vector under ``key`` as float64, or None when the key is absent."""
        try:
            if self._parsed is not None:
                if key not in self._parsed:
                    return None
                vec = np.asarray(self._parsed[key], dtype=np.float64)
                if vec.ndim != 1:  # a nested list or a bare number is not one vector
                    raise ValueError
                return vec
            if key not in self._index:
                return None
            start, end = self._index[key]
            body = bytes(self._buf[start:end]).strip()
            return np.array(body.split(b","), dtype=np.float64) if body else np.zeros(0)
        except (ValueError, TypeError):
            raise RamerError(f"{self.path}: key '{key}' does not hold a list of numbers") from None

    def close(self) -> None:
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()
        self._buf = b""
        self._fh.close()


# ------------------------------------------------------------------------------------- small readers
def _need_file(path: Path, hint: str = "") -> None:
    """A RamerError when ``path`` is not a file: missing, or something other than a regular file
    there (``need_regular_file``: a folder, a link to nothing, a pipe or a device)."""
    need_regular_file(path)
    if not path.is_file():
        raise RamerError(f"{path}: file not found{hint}")


def _read_text(path: Path) -> str:
    """``read_text`` without the byte-order mark that Windows editors put first (``int`` and
    ``float`` would refuse the first line), of a file (``_need_file``)."""
    _need_file(path)
    return read_text(path).removeprefix("\ufeff")


def _read_json(path: Path) -> Any:
    _need_file(path, " (a MEmoR release folder holds anno.json, data.json, train_id.txt, test_id.txt, features/)")
    return read_json(path)


def _read_ids(path: Path, n_items: int) -> list[int]:
    """The indices of an id file, in file order; an index listed twice is an error (one annotation
    would be two samples, possibly on both sides of train / valid)."""
    out, first_line = [], {}
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            i = int(line.strip())
        except ValueError:
            raise RamerError(
                f"{path}: line {line_no} is {line.strip()!r}, expected an integer index into anno.json"
            ) from None
        if not 0 <= i < n_items:
            raise RamerError(f"{path}: line {line_no}: index {i} is outside the anno.json list (0..{n_items - 1})")
        if i in first_line:
            raise RamerError(
                f"{path}: line {line_no}: index {i} is listed again (first on line {first_line[i]}); "
                "an annotation is one sample"
            )
        first_line[i] = line_no
        out.append(i)
    return out


def _disjoint(train_ids: list[int], test_ids: list[int], train_path: Path, test_path: Path) -> None:
    """A RamerError naming the indices listed in both id files (the same sample in train and test)."""
    in_train = set(train_ids)
    common = [i for i in test_ids if i in in_train]
    if common:
        shown = ", ".join(map(str, common[:10])) + (", ..." if len(common) > 10 else "")
        raise RamerError(
            f"{test_path}: {len(common)} ind{'ex is' if len(common) == 1 else 'ices are'} also in "
            f"{train_path.name} ({shown}); the splits must be disjoint"
        )


def _read_personality(path: Path, order: tuple[str, ...]) -> np.ndarray:
    """The (characters, 118) table, row i for character id i (``order[i]``), every column
    L2-normalised across the characters; a NaN or inf is an error naming its line and column."""
    n_chars = len(order)
    rows, line_of = [], []
    for line_no, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append([float(x) for x in line.strip().split(",")])
        except ValueError:
            raise RamerError(f"{path}: line {line_no} is not a row of numbers (no header expected)") from None
        line_of.append(line_no)
    if len(rows) != n_chars or any(len(r) != len(rows[0]) for r in rows):
        shape = (len(rows), sorted({len(r) for r in rows}))
        raise RamerError(
            f"{path}: {shape[0]} rows of lengths {shape[1]}; expected {n_chars} rows (characters) of one "
            f"length ({PERSONALITY_DIM} numbers in the release)"
        )
    x = np.asarray(rows, dtype=np.float64)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        r, col = (int(v) for v in bad[0])
        raise RamerError(
            f"{path}: holds non-finite values ({len(bad)}); the first is {x[r, col]} at line {line_of[r]} "
            f"(character {r}, {order[r]}), column {col} (0-based)"
        )
    norm = np.sqrt((x**2).sum(0, keepdims=True))
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _validate_clip(data: dict, clip: str, source: Path, n_chars: int) -> None:
    if not is_plain_name(clip):  # it names the clip's feature files
        raise RamerError(
            f"{source}: clip name {clip!r} (from anno.json) is not a plain file name (it names the clip's "
            "files under features/)"
        )
    if clip not in data:
        raise RamerError(f"{source}: clip '{clip}' (from anno.json) is missing")
    c = data[clip]
    if not isinstance(c, dict):
        raise RamerError(f"{source}: clip '{clip}' is a {type(c).__name__}, expected an object of segment lists")
    for key in ("seg_start", "seg_end", "speakers", "seg_ori_ind", "on_character", "start"):
        if key not in c:
            raise RamerError(f"{source}: clip '{clip}' has no key '{key}'")
    for key in ("seg_start", "seg_end", "speakers", "seg_ori_ind", "on_character"):
        if not isinstance(c[key], list):
            raise RamerError(f"{source}: clip '{clip}' key '{key}' is a {type(c[key]).__name__}, expected a list")
    try:
        lens = {k: len(c[k]) for k in ("seg_start", "seg_end", "speakers", "seg_ori_ind")}
        if lens["seg_start"] == 0 or len(set(lens.values())) != 1:
            raise RamerError(f"{source}: clip '{clip}': segment lists have lengths {lens}, expected equal and > 0")
        times = [float(x) for x in (*c["seg_start"], *c["seg_end"], c["start"])]
        ints = {k: [whole_number(x, text=True) for x in c[k]] for k in ("speakers", "seg_ori_ind", "on_character")}
    except (TypeError, ValueError):
        raise RamerError(
            f"{source}: clip '{clip}': segment times must be numbers, speakers / seg_ori_ind / on_character integers"
        ) from None
    for key, values in ints.items():
        if None in values:  # 0.7 read as 0 would name another character or segment
            x = c[key][values.index(None)]
            raise RamerError(f"{source}: clip '{clip}' key '{key}' holds {x!r}, expected a whole number")
    if not np.isfinite(times).all():
        raise RamerError(f"{source}: clip '{clip}': seg_start / seg_end / start hold a non-finite value (NaN or inf)")
    reversed_at = [s for s, (a, b) in enumerate(zip(c["seg_start"], c["seg_end"])) if float(b) < float(a)]
    if reversed_at:  # it would hold no moment and no frame: its target and visual silently lost
        s = reversed_at[0]
        raise RamerError(
            f"{source}: clip '{clip}' segment {s} ends before it starts (seg_start {c['seg_start'][s]}, "
            f"seg_end {c['seg_end'][s]}); {len(reversed_at)} such segment(s) in the clip"
        )
    for key, low in (("speakers", -1), ("on_character", 0)):
        bad = [x for x in ints[key] if not low <= x < n_chars]
        if bad:
            raise RamerError(f"{source}: clip '{clip}' key '{key}' holds {bad[0]}, outside the {n_chars} characters")


def _held_out(group_of: list, fraction: float, seed: int) -> set[int]:
    """The positions (of ``n = len(group_of)`` samples) drawn for validation, whole groups at a time
    (``group_of[j]`` is sample j's group; a group is never split). The samples are walked in a
    seeded permutation, each bringing in its group, and the first ``k`` groups reached are taken,
    ``k`` the one whose samples come nearest to ``round(n * fraction)`` (the smaller on a tie): at
    least one group and never all when ``fraction > 0`` and there are two groups or more. With a
    group per sample this is a seeded ``fraction`` of the samples, the plain per-sample draw."""
    rng = np.random.default_rng(seed)
    reached: dict[Any, list[int]] = {}
    for j in rng.permutation(len(group_of)).tolist():
        reached.setdefault(group_of[j], []).append(j)
    groups = list(reached.values())
    want = int(round(len(group_of) * fraction))
    taken = np.cumsum([0] + [len(g) for g in groups])  # samples in the first k groups
    low, high = (1, len(groups) - 1) if fraction > 0 and len(groups) >= 2 else (0, len(groups))
    k = low + int(np.argmin(np.abs(taken[low : high + 1] - want)))
    return {j for g in groups[:k] for j in g}


def _segment_of(moment: float, starts: np.ndarray, ends: np.ndarray, counts: dict[str, int]) -> int:
    """The (first) segment containing ``moment``, else the nearest one; both cases counted."""
    inside = np.flatnonzero((starts <= moment) & (moment < ends))
    if len(inside):
        counts["target_in_several_segments"] += len(inside) > 1
        return int(inside[0])
    counts["target_outside_segments"] += 1
    return int(np.argmin(np.maximum(starts - moment, 0) + np.maximum(moment - ends, 0)))


def _by_clip(ids: list[int], items: list[tuple]) -> list[list[int]]:
    """``ids`` grouped by clip: one list per clip, clips in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i in ids:
        groups.setdefault(items[i][0], []).append(i)
    return list(groups.values())


# ------------------------------------------------------------------------------------- the loader
def iter_memor(
    root: str | Path,
    labels: str = "primary",
    character_order: tuple[str, ...] | list[str] | None = None,
    protocol: str = "target",
    valid_fraction: float = 0.1,
    valid_seed: int = 2020,
) -> SplitStream:
    """Read a MEmoR release folder split by split (train / valid / test); ``protocol`` ``target``
    (a sample per annotation) or ``clip`` (a sample per clip), see the module docstring."""
    root = Path(root)
    if labels not in LABEL_SETS:
        raise RamerError(f"MEmoR labels '{labels}' unknown; choose primary (9) or fine_grained (14)")
    if protocol not in PROTOCOLS:
        raise RamerError(f"MEmoR protocol '{protocol}' unknown; choose target (a sample per annotation) or clip")
    if not 0.0 <= valid_fraction < 1.0:
        raise RamerError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    order = tuple(str(c).lower() for c in (character_order or CHARACTERS))
    if len(order) != len(CHARACTERS) or len(set(order)) != len(order) or "others" not in order:
        raise RamerError(f"character order {list(order)}: expected {len(CHARACTERS)} distinct names including 'others'")
    names = LABEL_SETS[labels]
    anno_path, data_path = root / "anno.json", root / "data.json"
    anno_all = _read_json(anno_path)
    if not isinstance(anno_all, dict) or labels not in anno_all:
        keys = sorted(anno_all) if isinstance(anno_all, dict) else type(anno_all).__name__
        raise RamerError(f"{anno_path}: has no key '{labels}' ({keys})")
    anno = anno_all[labels]
    if not isinstance(anno, list):
        raise RamerError(f"{anno_path}: '{labels}' is a {type(anno).__name__}, expected a list of annotations")
    data = _read_json(data_path)
    if not isinstance(data, dict):
        raise RamerError(f"{data_path}: holds a {type(data).__name__}, expected an object clip -> segments")

    # --- annotations: validate, then the union label of every (clip, character, moment)
    items = []
    for i, a in enumerate(anno):
        try:
            clip, char, moment, emo = (
                str(a["clip"]),
                whole_number(a["character"], text=True),
                float(a["moment"]),
                str(a["emotion"]),
            )
        except (KeyError, TypeError, ValueError):
            raise RamerError(
                f"{anno_path}: '{labels}'[{i}] = {str(a)[:120]}: expected clip, character, moment, emotion"
            ) from None
        if char is None:  # 0.7 read as 0 would be another character
            raise RamerError(
                f"{anno_path}: '{labels}'[{i}]: character {a['character']!r} is not a whole number "
                f"(a character id 0..{len(order) - 1})"
            )
        if not 0 <= char < len(order):
            raise RamerError(f"{anno_path}: '{labels}'[{i}]: character {char} outside 0..{len(order) - 1}")
        if not np.isfinite(moment):  # NaN would fall in no segment and be given the first
            raise RamerError(f"{anno_path}: '{labels}'[{i}]: moment {moment} is not a time in seconds")
        if emo not in names:
            raise RamerError(
                f"{anno_path}: '{labels}'[{i}]: emotion '{emo}' is not one of the {len(names)} {labels} "
                f"classes {list(names)}"
            )
        items.append((clip, char, moment, names.index(emo)))
    union: dict[tuple, set[int]] = defaultdict(set)
    for clip, char, moment, e in items:
        union[(clip, char, moment)].add(e)

    # --- splits: each sample is a list of annotation indices of one clip (one index for ``target``)
    train_ids = _read_ids(root / "train_id.txt", len(items))
    test_ids = _read_ids(root / "test_id.txt", len(items))
    _disjoint(train_ids, test_ids, root / "train_id.txt", root / "test_id.txt")
    if protocol == "target":
        train_samples, test_samples = [[i] for i in train_ids], [[i] for i in test_ids]
        group_of = [items[i][:3] for i in train_ids]  # one (clip, character, moment): identical samples
    else:
        train_samples, test_samples = _by_clip(train_ids, items), _by_clip(test_ids, items)
        group_of = list(range(len(train_samples)))  # a sample per clip already
    chosen = _held_out(group_of, valid_fraction, valid_seed)
    split_samples = {
        "train": [x for j, x in enumerate(train_samples) if j not in chosen],
        "valid": [x for j, x in enumerate(train_samples) if j in chosen],
        "test": test_samples,
    }
    clips_used = sorted({items[i][0] for samples in split_samples.values() for x in samples for i in x})
    for clip in clips_used:
        _validate_clip(data, clip, data_path, len(order))

    feat_dir = root / "features"
    personality = _read_personality(feat_dir / "character_features.csv", order)
    with ExitStack() as guard:  # close the feature files if setting up fails; else the reader closes them
        text_json = JsonVectors(feat_dir / "text_features.json")
        guard.callback(text_json.close)
        audio_json = JsonVectors(feat_dir / "audio_features.json")
        guard.callback(audio_json.close)

        # --- which text-key convention the release uses
        hits = {c: 0 for c in TEXT_KEY_CONVENTIONS}
        wanted = 0
        for clip in clips_used:
            c = data[clip]
            for s, spk in enumerate(c["speakers"]):
                if int(spk) < 0:
                    continue
                wanted += 1
                ori = int(c["seg_ori_ind"][s])
                hits["seg_ori_ind"] += ori >= 0 and f"{clip}+{ori}" in text_json
                hits["segment_index"] += f"{clip}+{s}" in text_json
        convention = "seg_ori_ind" if hits["seg_ori_ind"] >= hits["segment_index"] else "segment_index"

        def text_key(clip: str, s: int) -> str | None:
            if convention == "segment_index":
                return f"{clip}+{s}"
            ori = int(data[clip]["seg_ori_ind"][s])
            return f"{clip}+{ori}" if ori >= 0 else None

        def audio_key(clip: str, s: int) -> str | None:
            ori = int(data[clip]["seg_ori_ind"][s])
            return f"{clip}+{ori}" if ori >= 0 else None

        # --- visual: face names per clip (small), feature dims from the first clip that has visual
        vis_dir = feat_dir / "visual_features"
        if not vis_dir.is_dir():
            raise RamerError(
                f"{vis_dir}: folder not found (face_features/, face_names/, object_features/, environment_features/)"
            )
        clip_sets: dict[str, set[str]] = defaultdict(set)  # visual findings, counted once per clip
        unknown_faces: dict[str, int] = {}
        missing_examples: list[str] = []
        face_names: dict[str, list[str] | None] = {}
        for clip in clips_used:
            p = vis_dir / "face_names" / f"{clip}.txt"
            if p.exists():
                first = _read_text(p).split("\n", 1)[0]
                face_names[clip] = [x for x in first.strip().split("\t") if x]
            else:
                face_names[clip] = None

        def load_feature(kind: str, clip: str) -> np.ndarray:
            p = vis_dir / kind / f"{clip}.pt"
            need_regular_file(p)  # a folder or a pipe there is no missing file
            if not p.is_file():
                raise FileNotFoundError(p)
            try:
                x = as_array(safe_load(p), str(p))
            except (TypeError, ValueError):  # rows of different lengths
                raise RamerError(f"{p}: not a numeric (rows, dim) array") from None
            check_numeric(x, str(p))
            if x.ndim != 2:
                raise RamerError(f"{p}: shape {x.shape}, expected (rows, dim)")
            return x

        kinds = ("face_features", "object_features", "environment_features")
        dims, first_read = None, {}  # feature sizes, and the files (path, shape) they were read from
        for clip in clips_used:
            if face_names[clip] is not None and len(face_names[clip]) > FACE_THRESHOLD:
                try:
                    first_read = {k: (vis_dir / k / f"{clip}.pt", load_feature(k, clip).shape) for k in kinds}
                    dims = tuple(shape[1] for _, shape in first_read.values())
                    break
                except FileNotFoundError:
                    continue
        vis_dims = dims or DEFAULT_VISUAL_DIMS
        d_vis = int(sum(vis_dims))

        def person_of(face: str, p: Path) -> tuple[int, int]:
            stem = face.rsplit(".", 1)[0]
            frame, _, name = stem.partition("_")
            try:
                f = int(frame)
            except ValueError:
                raise RamerError(f"{p}: face image name '{face}' is not '{{frame}}_{{Name}}.jpg'") from None
            name = name.lower()
            if name in OTHERS_ALIASES:
                name = "others"
            return f, (order.index(name) if name in order else -1)

        def finite(x: np.ndarray, counted_in: dict[str, int]) -> np.ndarray:
            """``x`` with its NaN and inf replaced by 0, counted as visual values; so too a value of a
            wider float beyond float32's range, which the features' cast would make inf."""
            bad = ~np.isfinite(x)
            if x.dtype.kind == "f" and x.dtype.itemsize > 4:
                bad |= np.abs(np.nan_to_num(x)) > np.finfo(np.float32).max
            if not bad.any():
                return x
            counted_in["visual"] = counted_in.get("visual", 0) + int(bad.sum())
            return np.where(bad, 0, x)

        def clip_visual(clip: str) -> tuple[np.ndarray, np.ndarray] | None:
            """(len(order), S, d_vis) features and (len(order), S) presence, or None: all absent."""
            names_list = face_names[clip]
            if names_list is None:
                clip_sets["visual_clips_without_face_names"].add(clip)
                return None
            if len(names_list) <= FACE_THRESHOLD:
                clip_sets["visual_clips_with_10_or_fewer_faces"].add(clip)
                return None
            try:
                face, obj, env = (load_feature(kind, clip) for kind in kinds)
            except FileNotFoundError as e:
                clip_sets["visual_clips_missing_feature_files"].add(clip)
                if len(missing_examples) < 5 and str(e) not in missing_examples:
                    missing_examples.append(str(e))
                return None
            # NaN and inf replaced value by value, before any mean: one bad value is one 0 in the mean
            # (in the file's own precision: the means of finite values are as they always were)
            face, obj, env = (
                finite(x, once(("visual", clip, kind)))
                for x, kind in ((face, "face"), (obj, "object"), (env, "environment"))
            )
            names_path = vis_dir / "face_names" / f"{clip}.txt"
            for kind, x, want in zip(kinds, (face, obj, env), vis_dims):
                if x.shape[1] != want:  # which of the two is odd, only the other clips can tell
                    path, shape = first_read[kind]
                    raise RamerError(
                        f"{vis_dir / kind / (clip + '.pt')}: shape {tuple(x.shape)}, but {path} (the first clip "
                        f"read) has shape {tuple(shape)}; a feature size must be the same in every clip"
                    )
            if face.shape[0] != len(names_list):
                raise RamerError(
                    f"{vis_dir / 'face_features' / (clip + '.pt')}: shape {face.shape} but {names_path} names "
                    f"{len(names_list)} faces"
                )
            parsed = [person_of(f, names_path) for f in names_list]
            frames = np.array([f for f, _ in parsed], dtype=np.int64)
            who = np.array([c for _, c in parsed], dtype=np.int64)
            unknown_faces[clip] = int((who < 0).sum())
            c = data[clip]
            S = len(c["seg_start"])
            feats = np.zeros((len(order), S, d_vis), dtype=np.float32)
            present = np.zeros((len(order), S), dtype=bool)
            start = float(c["start"])
            d_face, d_obj, _ = vis_dims
            for s in range(S):
                begin = max(0, int((float(c["seg_start"][s]) - start) * FPS))
                end = int((float(c["seg_end"][s]) - start) * FPS)
                in_seg = (frames >= begin) & (frames <= end)
                # a table with fewer rows than the window needs: its part is the mean of the rows there
                short = [
                    kind for kind, table in (("object", obj), ("environment", env)) if end > max(begin, len(table))
                ]
                ctx = []
                for table in (obj, env):
                    rows = table[begin:end]
                    if len(rows):
                        ctx.append(rows.astype(np.float64).mean(0))
                    else:
                        ctx.append(np.zeros(table.shape[1]))
                for ch in np.unique(who[in_seg]):
                    if ch < 0:
                        continue
                    sel = in_seg & (who == ch)
                    if sel.sum() > FACE_THRESHOLD:
                        if not any(len(table[begin:end]) for table in (obj, env)):
                            clip_sets["visual_clips_with_a_segment_without_frames"].add(clip)
                        for kind in short:
                            clip_sets[f"visual_clips_with_too_few_{kind}_frames"].add(clip)
                        feats[ch, s, :d_face] = face[sel].astype(np.float64).mean(0)
                        feats[ch, s, d_face : d_face + d_obj] = ctx[0]
                        feats[ch, s, d_face + d_obj :] = ctx[1]
                        present[ch, s] = True
            return feats, present

        # --- dims of text / audio
        def first_dim(js: JsonVectors, default: int) -> int:
            for clip in clips_used:
                for s in range(len(data[clip]["seg_start"])):
                    for key in (text_key(clip, s), audio_key(clip, s)):
                        if key is not None and key in js:
                            return int(js.get(key).shape[0])
            return default

        d_text, d_audio = first_dim(text_json, 1024), first_dim(audio_json, 6373)

        info = new_info([str(root)])
        counts = info["nonfinite_replaced"]
        counted: set[tuple[str, ...]] = set()

        def once(what: tuple[str, ...]) -> dict[str, int]:
            """``counts`` the first time a file or key is read, else a dict nobody reads: a clip that
            several splits use counts its NaN and inf once, in the first split that reads it."""
            if what in counted:
                return {}
            counted.add(what)
            return counts

        memor_info: dict[str, Any] = {
            "labels": labels,
            "character_order": list(order),
            "text_key_convention": convention,
            "text_keys_matched": dict(hits),
            "text_keys_wanted": wanted,
            "protocol": protocol,
            "valid_fraction": valid_fraction,
            "valid_seed": valid_seed,
            "annotations": len(items),
            "visual_dims": {"face": vis_dims[0], "object": vis_dims[1], "environment": vis_dims[2]},
            "visual_dims_from_files": dims is not None,
        }
        if protocol == "clip":
            memor_info["clips_in_train_and_test"] = len(
                {items[i][0] for i in train_ids} & {items[i][0] for i in test_ids}
            )
        info["memor"] = memor_info

        # (clip, character, moment) of the train split, and of train_id.txt (train and valid): a valid or
        # test item sharing one is the same sample (its union label) as one the run learns from
        also_in = {"valid": {items[x[0]][:3] for x in split_samples["train"]}}
        also_in["test"] = also_in["valid"] | {items[x[0]][:3] for x in split_samples["valid"]}

        def build(split: str, samples: list[list[int]]) -> SceneStore:
            persons_of, grids = [], []
            for sample in samples:
                clip = items[sample[0]][0]
                persons = sorted(set(int(x) for x in data[clip]["on_character"]) | {items[i][1] for i in sample})
                persons_of.append(persons)
                grids.append((len(persons), len(data[clip]["seg_start"])))
            n = len(samples)
            grid = np.asarray(grids, dtype=np.int64).reshape(n, 2)
            sizes = grid[:, 0] * grid[:, 1]
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            person_offsets = np.concatenate([[0], np.cumsum(grid[:, 0])]).astype(np.int64)
            T, Q = int(offsets[-1]), int(person_offsets[-1])
            text = np.zeros((T, d_text), dtype=np.float32)
            audio = np.zeros((T, d_audio), dtype=np.float32)
            visual = np.zeros((T, d_vis), dtype=np.float32)
            present = np.zeros((T, 3), dtype=bool)
            target = np.zeros((n, 2), dtype=np.int32) if protocol == "target" else np.full((n, 2), -1, dtype=np.int32)
            role = np.zeros(n, dtype=np.int8) if protocol == "target" else np.full(n, ROLE_NONE, dtype=np.int8)
            target_tokens = np.zeros(T, dtype=bool) if protocol == "clip" else None
            labels_arr = np.zeros((n, len(names)), dtype=np.uint8)
            character = np.zeros(Q, dtype=np.int32)
            pers = np.zeros((Q, personality.shape[1]), dtype=np.float32)
            before = dict(counts)
            local = defaultdict(int, speech_by_non_person=0)
            by_clip: dict[str, list[int]] = defaultdict(list)
            for k, sample in enumerate(samples):
                by_clip[items[sample[0]][0]].append(k)
            for clip, ks in by_clip.items():  # one clip at a time: its visual files are read once
                c = data[clip]
                S = len(c["seg_start"])
                bounds = np.asarray(c["seg_start"], dtype=np.float64), np.asarray(c["seg_end"], dtype=np.float64)
                vis = clip_visual(clip)
                speakers = [int(x) for x in c["speakers"]]
                tvecs, avecs = {}, {}
                for s, spk in enumerate(speakers):
                    if spk < 0:
                        continue
                    tk, ak = text_key(clip, s), audio_key(clip, s)
                    tv = text_json.get(tk) if tk is not None else None
                    av = audio_json.get(ak) if ak is not None else None
                    for vec, dim, what, key in ((tv, d_text, "text", tk), (av, d_audio, "audio", ak)):
                        if vec is not None and vec.shape[0] != dim:
                            path = text_json.path if what == "text" else audio_json.path
                            raise RamerError(
                                f"{path}: key '{key}' has {vec.shape[0]} numbers, expected {dim} as for other keys"
                            )
                    if tv is not None:
                        tvecs[s] = as_float32(tv, once(("text", tk)), "text", f"{text_json.path} key '{tk}'")
                    if av is not None:
                        avecs[s] = as_float32(av, once(("audio", ak)), "audio", f"{audio_json.path} key '{ak}'")
                for k in ks:
                    persons = persons_of[k]
                    off, poff = int(offsets[k]), int(person_offsets[k])
                    # speech of a speaker who is none of the persons: in no token of this sample
                    local["speech_by_non_person"] += sum(speakers[s] not in persons for s in set(tvecs) | set(avecs))
                    for p, who in enumerate(persons):
                        rows = off + p * S + np.arange(S)
                        for s, spk in enumerate(speakers):
                            if spk != who:
                                continue
                            if s in tvecs:
                                text[rows[s]] = tvecs[s]
                                present[rows[s], 0] = True
                            else:
                                local["text_missing"] += 1
                            if s in avecs:
                                audio[rows[s]] = avecs[s]
                                present[rows[s], 1] = True
                            else:
                                local["audio_missing"] += 1
                        if vis is not None:
                            visual[rows] = vis[0][who]
                            present[rows, 2] = vis[1][who]
                        character[poff + p] = who
                        pers[poff + p] = personality[who]
                    if target_tokens is None:  # target: the item's (person, segment), its union label
                        _, char, moment, _ = items[samples[k][0]]
                        s_t = _segment_of(moment, *bounds, local)
                        target[k] = (persons.index(char), s_t)
                        role[k] = ROLE_SPEAKER if speakers[s_t] == char else ROLE_NONSPEAKER
                        labels_arr[k, sorted(union[(clip, char, moment)])] = 1
                    else:  # clip: every item's (person, segment) is a target token; the union of their emotions
                        for i in samples[k]:
                            _, char, moment, e = items[i]
                            target_tokens[off + persons.index(char) * S + _segment_of(moment, *bounds, local)] = True
                            labels_arr[k, e] = 1
            extra = {
                "nonfinite_replaced": {m: counts[m] - before[m] for m in MODALITIES},
                "empty_label_samples": int((labels_arr.sum(1) == 0).sum()),
                "multi_label_samples": int((labels_arr.sum(1) > 1).sum()),
                **{k: int(v) for k, v in local.items()},
            }
            if target_tokens is None:  # identical copies: items beyond the first of their (clip, character, moment)
                extra["duplicate_annotation_samples"] = n - len({items[x[0]][:3] for x in samples})
                if split in also_in:  # and copies of a sample that trains (or chooses the checkpoint)
                    extra["samples_also_in_train"] = sum(items[x[0]][:3] in also_in[split] for x in samples)
            else:
                extra["annotations"] = int(sum(len(x) for x in samples))
                extra["target_tokens"] = int(target_tokens.sum())
            return SceneStore(
                text=text,
                audio=audio,
                visual=visual,
                present=present,
                token_offsets=offsets,
                grid=grid.astype(np.int32),
                labels=labels_arr,
                target=target,
                role=role,
                person_offsets=person_offsets,
                character=character,
                label_names=names,
                ids=[
                    f"{x[0]}:{items[x[0]][0]}:{items[x[0]][1]}" if protocol == "target" else items[x[0]][0]
                    for x in samples
                ],
                personality=pers,
                personality_present=np.ones(Q, dtype=bool),
                target_tokens=target_tokens,
                source=f"{root}[{split}]",
                extra=extra,
            )

        def splits():
            try:
                for split in ("train", "valid", "test"):
                    store = build(split, split_samples[split])
                    info.setdefault("splits", {})[split] = store.extra
                    yield split, store
                memor_info.update({k: len(v) for k, v in sorted(clip_sets.items())})
                memor_info["face_crops_unknown_name"] = int(sum(unknown_faces.values()))
                if missing_examples:
                    memor_info["visual_missing_file_examples"] = missing_examples
            finally:
                text_json.close()
                audio_json.close()

        return SplitStream("memor", str(root), names, splits(), info, closing=guard.pop_all().close)
