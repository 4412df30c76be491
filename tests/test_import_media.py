"""`ramer data import` with media files as users' files get damaged: non-numbers in a float WAV, a
folder, pipe or link loop given as media, a long media file (decoded as a stream, stopped after the
last utterance), a file rewritten with its modification time put back (the cache), a failing
reimport over a set imported before, and Ctrl-C inside librosa's numba code.

The media are generated in each test (a WAV of a second or two at 16 kHz); the text model is the
hash stand-in ``fake_text``. The audio tests skip, with the reason, without the ``import`` extra.
"""

from __future__ import annotations

import csv
import os
import signal
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import pipe_at

from ramer.cli import main
from ramer.data import features as F
from ramer.data.conversations import import_conversations
from ramer.data.store import load_native
from ramer.errors import RamerError

NEEDS_IMPORT = "needs the optional extra ramer[import] (pip install 'ramer[import]')"
RATE = 16000


def wav(path: Path, wave: np.ndarray, subtype: str = "PCM_16") -> Path:
    """``wave`` (float, mono, 16 kHz) as a WAV file; ``subtype="FLOAT"`` keeps NaN and large values."""
    sf = pytest.importorskip("soundfile", reason=NEEDS_IMPORT)
    sf.write(path, np.asarray(wave, dtype=np.float32), RATE, subtype=subtype)
    return path


def tone(freq: float, seconds: float) -> np.ndarray:
    return (0.4 * np.sin(2 * np.pi * freq * np.arange(int(seconds * RATE)) / RATE)).astype(np.float32)


def table(path: Path, media: str, windows: list[tuple[float, float]]) -> Path:
    """Conversation ``m`` with ``media`` (one row per window), and two text-only ones for the splits."""
    rows = [
        {"conversation": "m", "index": i, "speaker": "ann" if i % 2 == 0 else "bob", "text": f"line {i}"}
        | {"start": a, "end": b, "media": media, "labels": "joy", "split": "train"}
        for i, (a, b) in enumerate(windows)
    ]
    rows += [
        {"conversation": c, "index": 0, "speaker": "dan", "text": f"{c} here", "labels": "joy", "split": c}
        for c in ("valid", "test")
    ]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def needs_audio():
    pytest.importorskip("av", reason=NEEDS_IMPORT)
    pytest.importorskip("librosa", reason=NEEDS_IMPORT)


def test_a_float_wav_holding_nan_or_huge_samples_is_one_line_naming_the_media(tmp_path, fake_text, needs_audio):
    """NaN in a float WAV reached librosa, whose ParameterError came out as a traceback; samples of
    1e30 overflowed its squares (a RuntimeWarning, then 'array must not contain infs or NaNs')."""
    bad = tone(200, 2.0)
    bad[1000:3000] = np.nan
    wav(tmp_path / "nan.wav", bad, "FLOAT")
    with pytest.raises(
        RamerError,
        match=r"talk.csv: row 2: media 'nan.wav': audio could not be decoded \(the sample "
        r"at 0.06 s is not a number \(NaN or infinite\): a damaged float file\)",
    ):
        import_conversations(table(tmp_path / "talk.csv", "nan.wav", [(0, 1), (1, 2)]), tmp_path / "ds")
    wav(tmp_path / "big.wav", tone(200, 2.0) * 1e30, "FLOAT")
    with pytest.raises(
        RamerError,
        match=r"media 'big.wav': audio could not be decoded \(the sample at 0.00 s is "
        r".*where samples lie within \[-1, 1\]",
    ):
        import_conversations(table(tmp_path / "talk.csv", "big.wav", [(0, 1), (1, 2)]), tmp_path / "ds")


def test_audio_is_decoded_as_a_stream_and_stops_after_the_last_utterance(tmp_path, needs_audio):
    """The features of each window equal those of the window cut from the whole decoded file
    (windows out of order, overlapping, one past the end); and decoding stops after the last
    window: a damaged tail after it is never read (the whole file was decoded into memory, 2 GB an
    hour of media of any rate, 6 GB for a header claiming 1 Hz)."""
    wave = np.concatenate([tone(150, 1.0), tone(300, 1.2)])
    path = wav(tmp_path / "a.wav", wave)
    windows = [(1.5, 1.8), (0.0, 0.3), (0.2, 0.5), (1.0, 1.1), (2.1, 2.4), (2.5, 3.0)]
    whole = F.decode_audio(path)
    feats, present = F.audio_features(path, windows)
    assert present.tolist() == [True, True, True, True, True, False]  # (2.5, 3.0): no sample there
    for s, (a, b) in enumerate(windows[:5]):
        expected = F.utterance_audio_features(whole[round(a * RATE) : round(b * RATE)])
        np.testing.assert_array_equal(feats[s], expected)
    assert not feats[5].any()

    # change only the media's length: what is held does not grow with it (it held the whole file)
    def peak(path: Path) -> int:
        tracemalloc.start()
        try:
            F.audio_features(path, [(0.0, 0.2), (0.1, 0.3)])
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short = peak(wav(tmp_path / "short.wav", tone(150, 1.0)))
    long = peak(wav(tmp_path / "long.wav", tone(150, 60.0)))  # 3.8 MB decoded
    assert long - short < 500_000, (short, long)

    tail = np.concatenate([wave, np.full(RATE, np.nan, np.float32)])  # NaN after the last window
    path = wav(tmp_path / "tail.wav", tail, "FLOAT")
    feats, present = F.audio_features(path, [(0.0, 0.2), (1.0, 1.2)])
    assert present.all() and np.isfinite(feats).all()


def test_utterances_that_follow_one_another_hold_one_window_not_the_media(monkeypatch):
    """Utterances each starting where the one before ended (as a conversation's do) let go of
    nothing when the decoder's chunks did not end exactly at a window's start: what was held grew to
    the whole media and was copied again at every window (20 minutes in 0.5 s windows: 15 GB
    copied). Each window's clip is still the one cut from the whole stream."""
    wave = np.random.default_rng(0).standard_normal(120 * RATE).astype(np.float32)

    def chunks(path, rate=RATE):  # frames end where the decoder's do, not at utterance times
        for at in range(0, n_samples, 1021):
            yield wave[at : min(at + 1021, n_samples)].copy()

    def signature(clip, sr=RATE):  # which samples a window was given, cheaply
        out = np.zeros(F.AUDIO_DIM, np.float32)
        out[:4] = len(clip), clip.sum(dtype=np.float64), clip[0], clip[-1]
        return out

    monkeypatch.setattr(F, "_audio_chunks", chunks)
    monkeypatch.setattr(F, "utterance_audio_features", signature)

    def peak(seconds: int) -> int:
        nonlocal n_samples
        n_samples = seconds * RATE
        windows = [(0.5 * k, 0.5 * (k + 1)) for k in range(2 * seconds)]
        tracemalloc.start()
        try:
            feats, present = F.audio_features(Path("m.wav"), windows)
            size = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert present.all()
        want = [signature(wave[round(a * RATE) : round(b * RATE)]) for a, b in windows]
        np.testing.assert_array_equal(feats, np.stack(want))
        return size - feats.nbytes - present.nbytes

    n_samples = 0
    short, long = peak(10), peak(120)  # 0.6 MB and 7.7 MB of samples
    assert long - short < 500_000, (short, long)


def test_media_that_is_a_folder_a_pipe_or_a_link_loop_says_what_it_is(tmp_path, fake_text, needs_audio):
    """Each was 'not found', though the name was there (a FIFO is never opened: reading one waits)."""
    (tmp_path / "folder.wav").mkdir()
    (tmp_path / "loop1.wav").symlink_to("loop2.wav")
    (tmp_path / "loop2.wav").symlink_to("loop1.wav")
    (tmp_path / "to_pipe.wav").symlink_to("pipe.wav")
    cases = [
        ("folder.wav", r"media 'folder.wav' is a folder, not an audio or video file"),
        ("pipe.wav", r"media 'pipe.wav' is not a regular file \(a pipe, socket or device"),
        ("to_pipe.wav", r"media 'to_pipe.wav' is not a regular file \(a pipe, socket or device"),
        ("loop1.wav", r"media 'loop1.wav' is a symbolic link that leads to no file \(a loop, or its target is gone"),
        ("gone.wav", r"media 'gone.wav' not found \(looked for "),
    ]
    with pipe_at(tmp_path / "pipe.wav"):  # read without the check, it ends at once: a wrong message, not a hang
        for name, message in cases:
            with pytest.raises(RamerError, match=r"talk.csv: row 2: " + message):
                import_conversations(table(tmp_path / "talk.csv", name, [(0, 1)]), tmp_path / "ds")


def test_a_media_cell_that_reads_as_a_url_opens_the_local_file_and_nothing_else(
    tmp_path, fake_text, needs_audio, monkeypatch
):
    """A table given as talk.csv (its folder '.') whose media cell is 'http:/HOST:PORT/a.wav', a file
    there: FFmpeg took the relative name for a URL and fetched it; now the local file is read."""
    import http.server
    import threading

    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cell = f"http:/127.0.0.1:{server.server_address[1]}/a.wav"
        (tmp_path / cell).parent.mkdir(parents=True)
        wav(tmp_path / cell, tone(200, 2.0))
        monkeypatch.chdir(tmp_path)
        import_conversations(table(Path("talk.csv"), cell, [(0, 1), (1, 2)]), Path("ds"))
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []
    assert np.abs(np.asarray(load_native(tmp_path / "ds").splits["train"].audio)).sum() > 0  # the tone, read
    # FFmpeg may open no other protocol for what the file itself names (a playlist's entries); this build
    # fetches none from a local playlist anyway, so the option is checked where the container holds it
    with F._open_media(F._av(), Path(cell)) as container:
        assert container.options == {"protocol_whitelist": "file"} and container.name == str(tmp_path / cell)


def test_a_media_file_rewritten_with_its_time_put_back_is_computed_again(tmp_path, fake_text, needs_audio):
    """Same size, modification time put back (cp -p, rsync -t, touch -r, an unpacked archive, a file
    system of whole seconds): the cache served the old file's features."""
    media = wav(tmp_path / "a.wav", tone(150, 2.0))
    src = table(tmp_path / "talk.csv", "a.wav", [(0, 1), (1, 2)])
    import_conversations(src, tmp_path / "ds")
    before = np.asarray(load_native(tmp_path / "ds").splits["train"].audio).copy()
    st = media.stat()
    wav(media, tone(400, 2.0))
    os.utime(media, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert media.stat().st_size == st.st_size and media.stat().st_mtime_ns == st.st_mtime_ns
    meta = import_conversations(src, tmp_path / "ds")
    assert meta["info"]["conversations"]["cache"]["computed"]["audio"] == 1
    after = np.asarray(load_native(tmp_path / "ds").splits["train"].audio)
    assert not np.array_equal(before, after)


def test_a_reimport_whose_media_fails_leaves_the_set_imported_before(tmp_path, fake_text, needs_audio):
    """meta.json went before the features were computed: a media file that failed to decode (or
    Ctrl-C) in a second import into the same --out left a set that no longer loaded."""
    wav(tmp_path / "a.wav", tone(150, 2.0))
    bad = tone(150, 2.0)
    bad[100] = np.inf
    wav(tmp_path / "b.wav", bad, "FLOAT")
    import_conversations(table(tmp_path / "talk.csv", "a.wav", [(0, 1), (1, 2)]), tmp_path / "ds")
    before = (tmp_path / "ds" / "meta.json").read_bytes()
    with pytest.raises(RamerError, match=r"media 'b.wav': audio could not be decoded"):
        import_conversations(table(tmp_path / "talk.csv", "b.wav", [(0, 1), (1, 2)]), tmp_path / "ds")
    assert (tmp_path / "ds" / "meta.json").read_bytes() == before
    assert len(load_native(tmp_path / "ds").splits["train"]) == 2


def test_ctrl_c_inside_numba_code_is_an_interrupt_that_keeps_the_cache(tmp_path, fake_text, needs_audio, capsys):
    """Ctrl-C while librosa's pYIN runs its numba code comes out as a SystemError ('returned a
    result with an exception set') caused by the KeyboardInterrupt: about every other Ctrl-C of an
    audio import was a traceback, not 'interrupted; the features computed so far are kept'."""
    wav(tmp_path / "a.wav", tone(150, 2.0))
    src = table(tmp_path / "talk.csv", "a.wav", [(0, 1), (1, 2)])

    def interrupted(path, windows, advance=None):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise SystemError("CPUDispatcher(<function _viterbi>) returned a result with an exception set") from e

    mp = pytest.MonkeyPatch()
    mp.setattr(F, "audio_features", interrupted)
    try:
        assert main(["data", "import", str(src), "--out", str(tmp_path / "ds")]) == 130
    finally:
        mp.undo()
    err = capsys.readouterr().err
    assert "interrupted; the features computed so far are kept in" in err and "Traceback" not in err
    assert list((tmp_path / "ds" / "cache" / "text").glob("*.npz"))  # the text stage's entries stay


def test_utterances_past_the_audio_a_file_holds_are_counted_in_a_note(tmp_path, fake_text, needs_audio, monkeypatch):
    """A WAV of no samples has no length to check the times against, and a video's sound may stop
    before its end: those utterances had no audio and nothing said why."""
    wav(tmp_path / "empty.wav", np.zeros(0, np.float32))
    meta = import_conversations(table(tmp_path / "talk.csv", "empty.wav", [(0, 1), (1, 2)]), tmp_path / "ds")
    c = meta["info"]["conversations"]
    assert c["counts"]["speaker_audio_present"] == 0
    assert (
        "audio: 2 utterances lie past the end of the audio their media holds (its sound stops early, or the "
        "file is cut short), so their audio is absent (the first: row 2)"
    ) in c["notes"]
    # a video of 2 s whose audio stops at 1 s (a microphone that stopped): the times are within the media
    video_with_short_audio(tmp_path / "v.mp4", video_seconds=2.0, audio_seconds=1.0)
    monkeypatch.setattr(F, "face_available", lambda: False)  # its faces are not what this is about
    meta = import_conversations(table(tmp_path / "talk.csv", "v.mp4", [(0, 0.5), (1.2, 1.4)]), tmp_path / "ds")
    c = meta["info"]["conversations"]
    assert c["counts"]["speaker_audio_present"] == 1
    assert any(n.startswith("audio: 1 utterance lies past the end") and "row 3" in n for n in c["notes"])


def video_with_short_audio(path: Path, video_seconds: float, audio_seconds: float) -> Path:
    """A tiny grey MPEG-4 video (64x48, 5 fps) with an AAC track that ends earlier."""
    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=5)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=RATE, layout="mono")
        for k in range(int(video_seconds * 5)):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 8 * k, np.uint8), format="rgb24")
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode(None):
            c.mux(packet)
        frame = av.AudioFrame.from_ndarray(tone(150, audio_seconds)[None], format="fltp", layout="mono")
        frame.sample_rate = RATE
        for packet in [*a.encode(frame), *a.encode(None)]:
            c.mux(packet)
    return path


FORK_AFTER_FACE_SEARCH = """
import os, sys, threading
import av
from ramer.data import features as F

class NoFaces:  # FaceMesh's place: the frame is converted and searched, nothing is found
    def process(self, img):
        return type("Result", (), {"multi_face_landmarks": None})()

held = threading.local()  # as PyAV's stashed exception (a traceback's frames) holds them, in this thread
with av.open(sys.argv[1]) as c:
    held.frames = []
    for frame in c.decode(video=0):
        F._faces_in(frame, NoFaces())
        held.frames.append(frame)

def fork():  # the child frees the main thread's locals as it starts
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)

thread = threading.Thread(target=fork)
thread.start()
thread.join()
print("forked and reaped", len(held.frames))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forks")
@pytest.mark.parametrize("width", [64, 1280])  # converted as it is; scaled down first (wider than 640)
def test_a_frame_searched_for_faces_and_held_on_does_not_hang_a_process_forked_from_another_thread(tmp_path, width):
    """A decoded frame keeps the converter that the face search used. Where that converter had threads
    of its own (swscale's default: one per core) and a thread's local held the frame (PyAV stashes an
    exception, and its traceback's frames, in one), a process forked from another thread freed it as
    it started and waited for ever for threads the fork did not copy: CI's ``predict(workers=2)``
    from a thread hung so, its worker's stack in that free. The face search converts on the calling
    thread."""
    import subprocess
    import sys

    av = pytest.importorskip("av", reason=NEEDS_IMPORT)
    path = tmp_path / "wide.mp4"
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=5)
        vs.width, vs.height, vs.pix_fmt = width, 48, "yuv420p"
        for k in range(5):
            frame = av.VideoFrame.from_ndarray(np.full((48, width, 3), 40 * k, np.uint8), format="rgb24")
            for packet in vs.encode(frame):
                c.mux(packet)
        for packet in vs.encode(None):
            c.mux(packet)
    script = subprocess.Popen(
        [sys.executable, "-c", FORK_AFTER_FACE_SEARCH, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the script and its forked child: one group, killed whole on a hang
    )
    try:
        out, err = script.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(script.pid, signal.SIGKILL)
        script.communicate()
        pytest.fail("the forked child still waits for the converter's threads after 60 s")
    assert script.returncode == 0, err
    assert out.strip() == "forked and reaped 5"
