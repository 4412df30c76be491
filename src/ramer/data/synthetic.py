"""The embedded multi-party benchmark (spec SYNTHETIC.md): seeded, deterministic scenes that are
hard in the ways MEmoR is hard.

Generative story, per scene:
- ``P`` persons drawn from a cast of recurring characters (each with a latent trait vector; the
  observed personality is a fixed random linear map of it plus noise), ``S`` segments, one speaker
  per segment (none with a small probability; speakers tend to keep the floor).
- A latent emotion state per (person, segment): AR(1) over segments (persistence) around a
  personality-driven bias, pulled towards the current speaker's state (contagion; stronger for the
  addressee), plus noise whose low-rank part makes labels co-occur.
- Labels ``y = 1[state > threshold]`` (thresholds calibrated once per world so that each label
  holds a fixed share of all (person, segment) states, three in four of them listeners'; the
  targets, half of them speakers, whose states spread more, hold more: docs/RESULTS.md gives the
  measured shares), then annotator noise flips a small share of bits.
- Features: text and audio only for the speaker, visual for every visible face; each a fixed
  random two-layer tanh map of the emotion state plus a nuisance factor (topic in text, voice in
  audio, lighting in visual) plus noise. Text is the most informative, visual the least.
- Target: one (person, segment) per scene, about half speakers and half non-speakers.

``complete=True`` gives the same scenes (persons, segments, latent states, labels, targets, roles,
ids; the random numbers are drawn alike) with every modality present for every person at every
segment, as if everyone spoke and every face were visible: the features of a token that is
present either way are equal, the others come from the same maps and noise. ``role`` keeps the
target's speaker / non-speaker role. The ``missing_rate`` knob hides nothing then.

The oracle sees the target's latent state before the label flips: its metrics are the ceiling.
"""

from __future__ import annotations

import numpy as np

from ramer.batch import ROLE_NONSPEAKER, ROLE_SPEAKER
from ramer.config import DataConfig, SynthConfig
from ramer.data.store import DataBundle, SceneStore
from ramer.errors import RamerError
from ramer.metrics import report

LABEL_NAMES = (
    "neutral", "joy", "anger", "disgust", "sadness", "surprise", "fear", "anticipation", "trust",
    "serenity", "interest", "annoyance", "boredom", "distraction",
)  # fmt: skip
# Share of positives per label over all (person, segment) states of the calibration scenes, not over
# the targets (cycled when more labels are asked for).
_FREQS = (0.35, 0.3, 0.15, 0.1, 0.2, 0.15, 0.1, 0.2, 0.15, 0.12, 0.18, 0.12, 0.08, 0.08)
_NOISE = {"text": 0.35, "audio": 0.7, "visual": 1.1}  # feature noise, relative to signal scale
_PERSIST, _CONTAGION_ADDRESSEE, _CONTAGION_OTHER, _KEEP_FLOOR = 0.7, 0.5, 0.25, 0.4


class _World:
    """Everything fixed across scenes: cast, maps, thresholds."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator) -> None:
        C, k = cfg.n_labels, cfg.trait_dim
        self.cfg = cfg
        self.traits = rng.normal(size=(cfg.n_characters, k))
        a_pers = rng.normal(size=(k, cfg.personality_dim)) / np.sqrt(k)
        self.personality = (
            self.traits @ a_pers + 0.3 * rng.normal(size=(cfg.n_characters, cfg.personality_dim))
        ).astype(np.float32)
        self.bias = self.traits @ (rng.normal(size=(k, C)) * 0.8 / np.sqrt(k))  # (chars, C)
        self.corr = rng.normal(size=(C, 2)) * 0.5
        dims = {"text": cfg.text_dim, "audio": cfg.audio_dim, "visual": cfg.visual_dim}
        self.maps = {}
        for m, d in dims.items():
            w1 = rng.normal(size=(C, 32)) * 1.5 / np.sqrt(C)
            b1 = rng.normal(size=32) * 0.1
            w2 = rng.normal(size=(32, d)) / np.sqrt(32) * 2.0
            self.maps[m] = (w1, b1, w2)
        self.voices = rng.normal(size=(cfg.n_characters, cfg.audio_dim)) * 0.5
        self.light_dir = rng.normal(size=cfg.visual_dim) * 0.5
        self.threshold = np.zeros(C)
        calib = np.concatenate([self.scene(rng)[2].reshape(-1, C) for _ in range(300)])
        freqs = np.array([_FREQS[j % len(_FREQS)] for j in range(C)])
        self.threshold = np.quantile(calib, 1 - freqs, axis=0).diagonal().copy()

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        C = self.cfg.n_labels
        return 0.6 * rng.normal(size=(n, 2)) @ self.corr.T + 0.5 * rng.normal(size=(n, C))

    def scene(self, rng: np.random.Generator):
        """One scene's cast, speakers and latent states (P, S, C)."""
        cfg = self.cfg
        P = int(rng.integers(cfg.persons_min, min(cfg.persons_max, cfg.n_characters) + 1))
        S = int(rng.integers(cfg.segments_min, cfg.segments_max + 1))
        chars = rng.choice(cfg.n_characters, P, replace=False)
        bias = self.bias[chars]  # (P, C)
        speakers = np.full(S, -1)
        addressee = np.full(S, -1)
        z = np.zeros((P, S, cfg.n_labels))
        prev = -1
        for s in range(S):
            if rng.random() >= cfg.no_speaker_prob:
                keep = prev >= 0 and rng.random() < _KEEP_FLOOR
                speakers[s] = prev if keep else int(rng.integers(P))
                if P > 1:
                    addressee[s] = (speakers[s] + 1 + int(rng.integers(P - 1))) % P
            base = bias if s == 0 else _PERSIST * z[:, s - 1] + (1 - _PERSIST) * bias
            z[:, s] = base + self.noise(rng, P)
            k = speakers[s]
            if k >= 0:
                pull = np.full(P, _CONTAGION_OTHER)
                pull[k] = 0.0
                if addressee[s] >= 0:
                    pull[addressee[s]] = _CONTAGION_ADDRESSEE
                z[:, s] += pull[:, None] * (z[k, s] - z[:, s])
            prev = speakers[s]
        return chars, speakers, z

    def features(self, m: str, z: np.ndarray) -> np.ndarray:
        w1, b1, w2 = self.maps[m]
        return np.tanh(z @ w1 + b1) @ w2


def _split(
    world: _World, n: int, rng: np.random.Generator, name: str, hide: np.random.Generator
) -> tuple[SceneStore, np.ndarray]:
    """``hide``: the stream of ``missing_rate``'s draws, apart from ``rng``, so that hiding more or
    less changes which modalities are present and nothing else (the scenes of every rate are those of 0)."""
    cfg = world.cfg
    C = cfg.n_labels
    grids, chars_all, pres_all, z_all, topic, light, voice = [], [], [], [], [], [], []
    target = np.zeros((n, 2), dtype=np.int32)
    role = np.zeros(n, dtype=np.int8)
    oracle = np.zeros((n, C), dtype=np.uint8)
    labels = np.zeros((n, C), dtype=np.uint8)
    for i in range(n):
        chars, speakers, z = world.scene(rng)
        P, S = z.shape[:2]
        is_spk = speakers[None, :] == np.arange(P)[:, None]  # (P, S)
        visible = rng.random((P, S)) < cfg.face_visible
        pres = np.stack([is_spk, is_spk, visible], -1).reshape(P * S, 3)
        if cfg.missing_rate > 0:
            pres &= hide.random(pres.shape) >= cfg.missing_rate
        want_speaker = rng.random() < 0.5
        candidates = np.argwhere(is_spk if want_speaker else ~is_spk)
        if len(candidates) == 0:
            candidates = np.argwhere(~is_spk if want_speaker else is_spk)
        p, s = candidates[int(rng.integers(len(candidates)))]
        target[i] = (p, s)
        role[i] = ROLE_SPEAKER if is_spk[p, s] else ROLE_NONSPEAKER
        oracle[i] = z[p, s] > world.threshold
        flips = rng.random(C) < cfg.flip_rate
        labels[i] = oracle[i] ^ flips
        grids.append((P, S))
        chars_all.append(chars)
        pres_all.append(pres)
        z_all.append(z.reshape(P * S, C))
        topic.append(np.broadcast_to(rng.normal(size=cfg.text_dim) * 0.5, (P * S, cfg.text_dim)))
        light.append(np.full(P * S, rng.normal()))
        voice.append(np.repeat(world.voices[chars], S, axis=0))
    z = np.concatenate(z_all)
    present = np.concatenate(pres_all)
    if cfg.complete:  # every draw above was made all the same, so the scenes are those of complete=False
        present = np.ones_like(present)
    nuisance = {
        "text": np.concatenate(topic),
        "audio": np.concatenate(voice),
        "visual": np.concatenate(light)[:, None] * world.light_dir[None],
    }
    feats = {}
    for k, m in enumerate(("text", "audio", "visual")):
        x = world.features(m, z) + nuisance[m] + _NOISE[m] * rng.normal(size=(len(z), nuisance[m].shape[1]))
        feats[m] = (x * present[:, k : k + 1]).astype(np.float32)
    grid = np.asarray(grids, dtype=np.int32)
    chars = np.concatenate(chars_all).astype(np.int32)
    store = SceneStore(
        text=feats["text"],
        audio=feats["audio"],
        visual=feats["visual"],
        present=present,
        token_offsets=np.concatenate([[0], np.cumsum(grid[:, 0].astype(np.int64) * grid[:, 1])]),
        grid=grid,
        labels=labels,
        target=target,
        role=role,
        person_offsets=np.concatenate([[0], np.cumsum(grid[:, 0].astype(np.int64))]),
        character=chars,
        personality=world.personality[chars],
        personality_present=np.ones(len(chars), dtype=bool),
        label_names=LABEL_NAMES[:C],
        ids=[f"synth-{name}-{i:05d}" for i in range(n)],
        source=f"synthetic:{name}",
    )
    return store, oracle


def generate(cfg: SynthConfig | None = None) -> DataBundle:
    """Generate the benchmark: same config, same arrays, byte for byte."""
    if cfg is not None and not isinstance(cfg, SynthConfig):
        hint = " (a run config's: cfg.data.synthetic)" if isinstance(cfg, DataConfig) else ""
        raise RamerError(f"generate takes a SynthConfig (SynthConfig(n_train=64, ...)), not {type(cfg).__name__}{hint}")
    cfg = cfg or SynthConfig()
    for what in ("persons", "segments"):
        low, high = getattr(cfg, f"{what}_min"), getattr(cfg, f"{what}_max")
        if low > high:
            raise RamerError(f"synthetic: {what}_min ({low}) must not exceed {what}_max ({high})")
    if cfg.persons_min > cfg.n_characters:
        raise RamerError(f"synthetic: persons_min {cfg.persons_min} exceeds n_characters {cfg.n_characters}")
    world_seq, *split_seqs = np.random.SeedSequence(cfg.seed).spawn(4)
    world = _World(cfg, np.random.default_rng(world_seq))
    splits, info = {}, {"oracle": {}}
    for (name, n), seq in zip((("train", cfg.n_train), ("valid", cfg.n_valid), ("test", cfg.n_test)), split_seqs):
        hide = np.random.default_rng(seq.spawn(1)[0])  # a child of the split's seed: its own stream
        store, oracle = _split(world, n, np.random.default_rng(seq), name, hide)
        store.extra["oracle"] = oracle
        store.mark_checked()  # generated finite
        splits[name] = store
        rep = report(store.labels, oracle.astype(np.float64), 0.5, store.role, per_label=False)
        info["oracle"][name] = rep
    return DataBundle(splits, LABEL_NAMES[: cfg.n_labels], "synthetic", f"synthetic(seed={cfg.seed})", info)


def statistics(bundle: DataBundle) -> dict:
    """Sizes, label cardinality and frequencies, presence, speaker share, per split."""
    out = {}
    for name, st in bundle.splits.items():
        sizes = st.grid[:, 0].astype(np.int64) * st.grid[:, 1]
        lab = np.asarray(st.labels)
        out[name] = {
            "scenes": len(st),
            "persons_mean": float(st.grid[:, 0].mean()),
            "segments_mean": float(st.grid[:, 1].mean()),
            "tokens_mean": float(sizes.mean()),
            "label_cardinality": float(lab.sum(1).mean()),
            "label_freq": {n: float(f) for n, f in zip(bundle.label_names, lab.mean(0))},
            "empty_label_share": float((lab.sum(1) == 0).mean()),
            "presence": {m: float(v) for m, v in zip(("text", "audio", "visual"), np.asarray(st.present).mean(0))},
            "speaker_target_share": float((np.asarray(st.role) == ROLE_SPEAKER).mean()),
        }
    return out


def check_complete(cfg: DataConfig) -> None:
    """``data.synthetic.complete`` means complete: only the embedded benchmark has it, and no extra
    modality is hidden from it (``data.missing_rate`` must be 0)."""
    if not cfg.synthetic.complete:
        return
    if cfg.path is not None:
        raise RamerError(f"data.synthetic.complete is for the embedded benchmark; data.path is set ({cfg.path})")
    if cfg.missing_rate > 0:
        raise RamerError(
            f"data.synthetic.complete: complete inputs hide nothing, but data.missing_rate is "
            f"{cfg.missing_rate:g}; set it to 0"
        )


def complete_data(cfg: DataConfig) -> DataConfig:
    """A copy of ``cfg`` with complete inputs: the same scenes, every modality present, no extra hiding."""
    out = cfg.model_copy(deep=True)
    out.synthetic.complete = True
    out.missing_rate = 0.0
    return out
