"""What the command line writes where: stdout holds only a command's result (the table, the JSON,
the lines of ``--out -``, the file it wrote), as given, so that scripts can read it; notes and hints
go to stderr."""

import errno
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_conversations import base_rows, write_table

from ramer.cli import main
from ramer.paths import atomic_write_text, hold, remove_temporaries

pytestmark = pytest.mark.usefixtures("one_thread")


def test_import_notes_go_to_stderr_and_its_summary_to_stdout(tmp_path, fake_text, capsys):
    """`ramer data import T --out D > summary.txt`: a text-only table's note (no media) is for the
    person, on stderr; stdout is the summary and the folder written."""
    table = write_table(tmp_path / "talk.csv", base_rows())
    ds = tmp_path / "ds"
    assert main(["data", "import", str(table), "--out", str(ds)]) == 0
    out, err = capsys.readouterr()
    assert not [line for line in out.splitlines() if line.startswith("note: ")], out
    assert "note: no media: text only" in err, err
    assert out.splitlines()[-1] == f"wrote {ds}" and "conversations, " in out.splitlines()[0], out


def test_a_path_is_printed_as_given(tiny_run, tmp_path, capsys):
    """rich's markup and emoji codes are not applied to what is printed: a name holding ``[v2]`` was
    printed without it, ``:100:`` as an emoji, and ``[/]`` ended the command with a traceback after the
    file was written."""
    run, cfg = tiny_run
    n = cfg.data.synthetic.n_test  # a sample a scene
    for out in (tmp_path / "p[v2]:100:.jsonl", tmp_path / "a[" / "]b.jsonl"):
        assert main(["predict", str(run), "--out", str(out)]) == 0
        assert capsys.readouterr().out.splitlines() == [f"wrote {n} predictions to {out}"]
        assert out.is_file()


def test_a_long_line_is_one_line_in_a_log(tiny_run, tmp_path, capsys):
    """stdout not a terminal (a log, a pipe): a line longer than the table width (160) is not broken
    in two, so that the path it names can be read back."""
    run, cfg = tiny_run
    out = tmp_path / ("d" * 150) / "preds.jsonl"
    assert main(["predict", str(run), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {cfg.data.synthetic.n_test} predictions to {out}\n"


def test_predict_out_dash_writes_the_lines_to_stdout(tiny_run, tmp_path, capsys, monkeypatch):
    """`ramer predict RUN --out - | jq`: the predictions are stdout, one JSON object a line, and no
    file named ``-`` is made; what the command says goes to stderr."""
    run, cfg = tiny_run
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(run), "--out", str(tmp_path / "preds.jsonl")]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), "--out", "-"]) == 0
    out, err = capsys.readouterr()
    assert out == (tmp_path / "preds.jsonl").read_text()
    assert [json.loads(line)["id"] for line in out.splitlines()][:1] == ["synth-test-00000"]
    assert f"wrote {cfg.data.synthetic.n_test} predictions to stdout" in err
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("argv", [["view", "RUN", "--out", "-"], ["export", "RUN", "--onnx", "-"]])
def test_a_file_output_refuses_dash(tiny_run, tmp_path, capsys, monkeypatch, argv):
    """``-`` (stdout, by convention) where the command writes only a file: one line, not a file
    named ``-``."""
    run, _ = tiny_run
    monkeypatch.chdir(tmp_path)
    assert main([str(run) if a == "RUN" else a for a in argv]) == 2
    assert "-: this command writes a file, not stdout; give a file name" in capsys.readouterr().err
    assert not (tmp_path / "-").exists()


class FullDisk(io.StringIO):
    """A stdout redirected to a file on a full disk."""

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_a_stdout_that_cannot_be_written_is_one_line(tiny_run, capsys, monkeypatch, json_flag):
    """`ramer eval RUN > out.txt` on a full disk: `error: stdout: cannot write (...)`, exit 2, not a
    traceback (the table through rich, the JSON written directly)."""
    run, _ = tiny_run
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", FullDisk())
    assert main(["eval", str(run), *json_flag]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: stdout: cannot write ({os.strerror(errno.ENOSPC)})"


def with_stdout_closed(args: str) -> subprocess.CompletedProcess:
    """``python -m ramer ARGS >&-`` as a shell runs it (a cron line): its stderr as text."""
    return subprocess.run(
        f"{shlex.quote(sys.executable)} -m ramer {args} >&-",
        shell=True,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("json_flag", ["", " --json"])
def test_a_closed_stdout_is_no_traceback(tiny_run, json_flag):
    """`ramer eval RUN --json >&-` (a cron line): the import of the command failed on the missing
    stdout; now the JSON that has nowhere to go is one line and exit 2, as is the table (which rich
    printed to nothing, exit 0)."""
    run, _ = tiny_run
    proc = with_stdout_closed(f"eval {shlex.quote(str(run))}{json_flag}")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: stdout: closed;"), proc.stderr


def test_a_command_line_error_with_stderr_closed_writes_nothing_to_stdout(tmp_path):
    """`ramer predict RUN --out - --bad 2>&- | reader`: argparse printed its usage to stdout where
    stderr is closed, into what the reader takes for predictions; the exit code says it all."""
    proc = subprocess.run(
        f"{shlex.quote(sys.executable)} -m ramer predict {shlex.quote(str(tmp_path))} --out - --bad 2>&-",
        shell=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert (proc.returncode, proc.stdout) == (2, "")


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_data_info_to_a_stdout_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch, json_flag):
    """`ramer data info D --json > out.json` on a full disk was an OSError traceback (its print)."""
    data = tmp_path / "d"
    sets = [x for s in ("n_train=8", "n_valid=4", "n_test=4") for x in ("--set", s)]
    assert main(["data", "synth", "--out", str(data), *sets]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sys, "stdout", FullDisk())
    assert main(["data", "info", str(data), *json_flag]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"error: stdout: cannot write ({os.strerror(errno.ENOSPC)})"


def test_a_table_says_why_its_parts_do_not_add_up_to_overall():
    """Samples without a role (-1: a whole-scene target) among speakers and non-speakers count in
    overall alone: speaker n + non-speaker n fell short of overall n, and the table did not say why."""
    from rich.console import Console

    from ramer.cli import metrics_table

    figures = {"micro_f1": 0.5, "macro_f1": 0.5, "acc": 0.5, "hamming_loss": 0.1}
    mixed = {"overall": {**figures, "n": 10}, "speaker": {**figures, "n": 4}, "nonspeaker": {**figures, "n": 3}}
    console = Console(width=200, record=True)
    console.print(metrics_table("t", {"m": mixed}))
    assert "overall also counts 3 sample(s) without a role" in console.export_text()
    console.print(metrics_table("t", {"m": {**mixed, "overall": {**figures, "n": 7}}}))
    assert console.export_text().count("without a role") == 0  # export_text clears: the second table alone


def test_the_python_api_prints_a_path_as_given(tmp_path, capsys):
    """Without a console of the caller's (the Python API) a recipe printed through rich's defaults,
    which read a folder named 'r[v2]' as markup and printed 'r'."""
    from test_recipe import tiny_cfg

    from ramer.data.synthetic import generate
    from ramer.train.recipe import Recipe

    cfg = tiny_cfg(extra=["train.epochs=1"])
    out = tmp_path / "r[v2]"
    recipe = Recipe(cfg, out, bundle=generate(cfg.data.synthetic))
    recipe.announce = True  # as the command line has it say where the run goes
    recipe.run()
    assert f"training late_fusion -> {out}\n" in capsys.readouterr().err


def test_a_reader_that_goes_away_partway_ends_it_with_141(tiny_run):
    """`ramer predict RUN --out - | head -c 10`: the lines are more than the pipe holds and the reader
    leaves after 10 bytes. Python's ``sys.stdout.flush`` dropped what the partial write left and the
    command ended 0 ("wrote N predictions to stdout"), its output cut short without a word."""
    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("no pipe size to set (not Linux)")
    run, _ = tiny_run
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)  # the lines (about 15 KB) do not fit
    proc = subprocess.Popen(
        [sys.executable, "-m", "ramer", "predict", str(run), "--out", "-"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        assert len(reader.read(10)) == 10
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 141 and "predictions to stdout" not in err, err


def test_a_table_larger_than_the_pipe_is_not_cut_short_without_a_word():
    """What ``OUT`` prints last (the timelines of ``ramer predict RUN --data CONVERSATIONS --out F``, a
    table) goes through ``write_stdout`` as the lines of ``--out -`` do: rich's one write and flush
    of a text larger than the pipe dropped the rest when the reader left, and the command ended 0."""
    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("no pipe size to set (not Linux)")
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    printed = "from ramer.cli import OUT; OUT.print('x' * 100_000)"
    proc = subprocess.Popen([sys.executable, "-c", printed], stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        assert len(reader.read(10)) == 10
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0 and "BrokenPipeError" in err, err


def test_a_non_blocking_stdout_gets_all_of_the_output():
    """A parent that made the pipe non-blocking (its other end shared with a tool that wants it so):
    the lines beyond what the pipe held were a "cannot write (Resource temporarily unavailable)", and
    Python's own write dropped them without a word; ``write_stdout`` waits until the pipe takes more."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    printed = "from ramer.paths import write_stdout; write_stdout('x' * 300_000)"
    proc = subprocess.Popen([sys.executable, "-c", printed], stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    time.sleep(1)  # the pipe is full before the reader starts
    with os.fdopen(read, "rb") as reader:
        got = reader.read()
    err = proc.communicate(timeout=60)[1]
    assert (proc.returncode, len(got)) == (0, 300_000), err


@pytest.mark.parametrize("with_descriptor", [True, False])
def test_a_character_the_stdout_encoding_lacks_is_one_line(tmp_path, monkeypatch, with_descriptor):
    """A person's name to a stdout of ``PYTHONIOENCODING=ascii``: a UnicodeEncodeError's traceback;
    now an error line naming stdout, its encoding and the remedy. ramer's own characters (an empty
    cell's dash, mean ± std) are written as ASCII there: ``ramer train`` of a text-only import ended
    2 after its run was saved, on the dash of the table's empty non-speaker cells."""
    from ramer.errors import RamerError
    from ramer.paths import write_stdout

    raw = open(tmp_path / "out.txt", "wb") if with_descriptor else io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stdout)
    if with_descriptor:  # the process's own: written with os.write
        monkeypatch.setattr(sys, "__stdout__", stdout)
    write_stdout("mean ± std, – …\n")
    with pytest.raises(RamerError) as e:
        write_stdout("Zoë: 0.5 ± 0.1\n")
    monkeypatch.undo()
    stdout.flush()
    written = (tmp_path / "out.txt").read_bytes() if with_descriptor else raw.getvalue()
    stdout.close()
    assert written == b"mean +/- std, - ...\n"
    said = "stdout: its encoding (ascii) cannot write '\\xeb'; run the command with PYTHONIOENCODING=utf-8"
    assert str(e.value) == said


@pytest.mark.parametrize("with_descriptor", [True, False])
def test_a_file_name_of_bytes_that_are_not_utf8_reaches_a_strict_utf8_stdout(tmp_path, monkeypatch, with_descriptor):
    """A run folder named with a Latin-1 'é' (bytes, not UTF-8 text) in the table's heading, to the
    stdout of a UTF-8 locale (whose errors are strict): ``ramer train`` ended 2 after its run was
    saved, advising PYTHONIOENCODING=utf-8, which it was. The byte goes out as it is, as ls writes it
    (to a stream without a descriptor, a notebook's, as ``\\xe9``); a character the encoding lacks
    otherwise is still the error."""
    from ramer.errors import RamerError
    from ramer.paths import write_stdout

    raw = open(tmp_path / "out.txt", "wb") if with_descriptor else io.BytesIO()
    stdout = io.TextIOWrapper(raw, encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdout", stdout)
    if with_descriptor:
        monkeypatch.setattr(sys, "__stdout__", stdout)
    run = os.fsdecode(b"runs/t\xe9st")
    write_stdout(f"test metrics ({run}) ± 0.1\n")
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", ascii_out)
    with pytest.raises(RamerError, match="cannot write '\\\\xeb'"):  # Zoë's ë, not the file name's byte
        write_stdout(f"Zoë in {run}\n")
    monkeypatch.undo()
    stdout.flush()
    written = (tmp_path / "out.txt").read_bytes() if with_descriptor else raw.getvalue()
    stdout.close()
    assert written == (
        b"test metrics (runs/t\xe9st) \xc2\xb1 0.1\n"
        if with_descriptor
        else b"test metrics (runs/t\\xe9st) \xc2\xb1 0.1\n"
    )


def test_ramers_own_characters_reach_an_ascii_stdout_as_ascii():
    """``ramer reproduce --help`` (its mean ± std) to a stdout of ``PYTHONIOENCODING=ascii`` ended 2."""
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run(
        [sys.executable, "-m", "ramer", "reproduce", "--help"], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 0 and b"mean +/- std" in proc.stdout, proc.stderr[-2000:]


def test_text_goes_where_a_replaced_stdout_sends_it(tmp_path, monkeypatch):
    """A stdout a host put in place (Jupyter's, whose ``fileno`` is the terminal the kernel started
    in, not the notebook): ``write_stdout`` wrote to that descriptor and the notebook showed nothing."""
    from ramer.paths import write_stdout

    class Shown(io.StringIO):
        def fileno(self):
            return terminal.fileno()

    terminal = open(tmp_path / "terminal", "w")
    shown = Shown()
    monkeypatch.setattr(sys, "stdout", shown)
    write_stdout('{"id": 1}\n')
    terminal.close()
    assert (shown.getvalue(), (tmp_path / "terminal").read_text()) == ('{"id": 1}\n', "")


def test_on_windows_stdout_keeps_its_newlines(tmp_path, monkeypatch):
    """Windows' stdout writes a newline as \\r\\n (and a console in its own encoding): the bytes of
    ``os.write`` went around it, so ``ramer predict --out -`` wrote other lines than ``> file`` did."""
    from ramer.paths import write_stdout

    stdout = io.TextIOWrapper(open(tmp_path / "out.txt", "wb"), encoding="utf-8", newline="\r\n")
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "__stdout__", stdout)
    monkeypatch.setattr(os, "name", "nt")
    write_stdout("a\nb\n")
    monkeypatch.undo()
    stdout.close()
    assert (tmp_path / "out.txt").read_bytes() == b"a\r\nb\r\n"


def entry_script() -> str:
    """What pip's wrapper of the ``ramer`` console script runs: ``from MODULE import FUNC`` (pyproject's
    ``[project.scripts]``), then ``sys.exit(FUNC())``."""
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    module, func = re.search(r'^ramer = "([\w.]+):(\w+)"', pyproject, re.MULTILINE).groups()
    return f"import sys\nfrom {module} import {func}\nsys.exit({func}())\n"


def sigint_default() -> None:
    """In the child before it runs: SIGINT's default disposition. A suite started as a background job
    of a non-interactive shell (`./.ci/run &`) runs with SIGINT ignored, which its children inherit:
    Python then installs no handler, and the SIGINT these tests send did nothing (exit 1, not 130)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(os.name != "posix", reason="a SIGINT sent to itself: POSIX")
@pytest.mark.parametrize("how", ["console script", "python -m ramer"])
def test_ctrl_c_while_the_command_imports_is_the_interrupted_line(tmp_path, how):
    """Ctrl-C in the first tenths of a second of a command, while ``ramer.cli`` imports (pydantic, rich,
    yaml): Python's traceback from pip's wrapper script or runpy, outside ``main``'s own answer. A
    ``yaml`` put first on the path sends the process a real SIGINT as ``ramer.cli`` imports it."""
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml" / "__init__.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    argv = ["-c", entry_script(), "--version"] if how == "console script" else ["-m", "ramer", "--version"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env, timeout=120, preexec_fn=sigint_default
    )
    assert (proc.returncode, proc.stderr) == (130, "interrupted\n")


@pytest.mark.skipif(os.name != "posix", reason="a SIGINT sent to itself: POSIX")
def test_ctrl_c_after_the_command_returned_keeps_its_exit_code(tmp_path):
    """Ctrl-C in the few tenths of a second between a command's last line and the end of the process
    (the interpreter's teardown: torch's): the process ended by SIGINT with a traceback, which a
    script takes for a failure of work that was done. A SIGINT sent as the command returns."""
    script = entry_script().replace(
        "sys.exit(run())", "code = run()\nos.kill(os.getpid(), signal.SIGINT)\nsys.exit(code)"
    )
    sizes = ["--set", "n_train=8", "--set", "n_valid=4", "--set", "n_test=4"]
    proc = subprocess.run(
        [sys.executable, "-c", "import os, signal\n" + script, "data", "synth", "--out", str(tmp_path / "d"), *sizes],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=sigint_default,
    )
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout.splitlines()[-1] == f"wrote {tmp_path / 'd'}"


def test_ctrl_c_while_the_command_imports_with_stderr_closed_writes_into_no_file(tmp_path):
    """With ``2>&-`` the first file a process opens is descriptor 2: the interrupted line went into a
    file an import had open (the ``yaml`` here opens one, then sends the SIGINT)."""
    (tmp_path / "yaml").mkdir()
    opened = tmp_path / "opened.txt"
    code = f"FD = os.open({str(opened)!r}, os.O_RDWR | os.O_CREAT)\nos.kill(os.getpid(), signal.SIGINT)\n"
    (tmp_path / "yaml" / "__init__.py").write_text(f"import os, signal\n{code}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    cmd = f"{shlex.quote(sys.executable)} -m ramer --version 2>&-"
    proc = subprocess.run(cmd, shell=True, env=env, timeout=120, preexec_fn=sigint_default)
    assert (proc.returncode, opened.read_text()) == (130, "")


@pytest.mark.skipif(os.name != "posix", reason="POSIX redirections")
@pytest.mark.parametrize("closed", ["2>&-", "1>&- 2>&-", "<&- >&- 2>&-"])
@pytest.mark.parametrize("how", ["console script", "python -m ramer"])
def test_a_file_the_command_opens_never_takes_a_closed_standard_descriptor(tmp_path, closed, how):
    """`ramer train ... 2>&-`: the first file the command opened became descriptor 2, and what torch's
    C++ logging (or onnxruntime's) writes to stderr went into it; so in the processes it starts
    (bench --jobs, --nproc). The ``yaml`` first on the path opens a file as ``ramer.cli`` imports
    it, and starts a process that does the same; each records which descriptor it got."""
    (tmp_path / "yaml").mkdir()
    got = tmp_path / "got.txt"
    opens = "import os; fd = os.open({!r}, os.O_RDWR | os.O_CREAT); open({!r}, 'a').write(f'{{fd}} ')"
    code = opens.format(str(tmp_path / "opened"), str(got))  # here, and in a process it starts
    code += f"\nimport subprocess, sys\nsubprocess.run([sys.executable, '-c', {code!r}])\nos._exit(0)\n"
    (tmp_path / "yaml" / "__init__.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    argv = ["-c", shlex.quote(entry_script())] if how == "console script" else ["-m", "ramer"]
    proc = subprocess.run(f"{shlex.quote(sys.executable)} {' '.join(argv)} --version {closed}", shell=True, env=env)
    assert proc.returncode == 0 and len(fds := got.read_text().split()) == 2 and min(map(int, fds)) > 2, fds


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("how", ["console script", "python -m ramer"])
def test_an_error_line_that_stderr_cannot_take_keeps_the_exit_code(how):
    """`ramer eval MISSING 2>/dev/full`: the error line could not be written, nor the traceback of
    that failure, and the command ended 1; there is nowhere to say anything, and it ends 2."""
    argv = ["-c", entry_script()] if how == "console script" else ["-m", "ramer"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, *argv, "eval", "/nonexistent/run"], stderr=full, timeout=120)
    assert proc.returncode == 2


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"], ["data", "import", "--help"]])
def test_help_and_version_that_stdout_cannot_take_are_an_error(argv):
    """`ramer --help >/dev/full`: argparse ignored the OSError and the command ended 0, having printed
    nothing; it is the one-line error of any stdout the system will not write, exit 2."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "ramer", *argv], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
        )
    assert proc.returncode == 2 and proc.stderr == "error: stdout: cannot write (No space left on device)\n"
    closed = subprocess.run(  # a closed stdout (>&-): the help went to stderr, exit 0
        f"{shlex.quote(sys.executable)} -m ramer {' '.join(argv)} >&-", shell=True, capture_output=True, text=True
    )
    assert closed.returncode == 2 and closed.stderr.startswith("error: stdout: closed;"), closed.stderr[:200]


def test_an_error_larger_than_the_pipe_whose_reader_leaves_ends_it_with_141():
    """`ramer train --model NAME 2>&1 | head -c 10`, the error line (it names the model) larger than the
    pipe holds: ``ERR``'s print through ``sys.stderr`` dropped what the reader did not take and the
    command ended 2 with its line cut short; it now writes as ``OUT`` does, 141."""
    fcntl = pytest.importorskip("fcntl")
    if not hasattr(fcntl, "F_SETPIPE_SZ"):
        pytest.skip("no pipe size to set (not Linux)")
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, 4096)
    argv = [sys.executable, "-m", "ramer", "train", "--model", "y" * 100_000]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=write)
    os.close(write)
    with os.fdopen(read, "rb") as reader:
        assert reader.read(10) == b"error: unk"
    assert proc.wait(timeout=120) == 141


def start_write(path: Path) -> tuple[subprocess.Popen, str]:
    """Another process in the middle of ``atomic_write(path)``: it and its temporary's name."""
    code = (
        "import sys, time\nfrom ramer.paths import atomic_write\n"
        "atomic_write(sys.argv[1], lambda tmp: (print(tmp, flush=True), time.sleep(120)))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    return proc, Path(proc.stdout.readline().strip()).name


@pytest.mark.skipif(os.name != "posix", reason="no locks to tell a live write from a killed one")
@pytest.mark.parametrize("name", ["demo.json", "trials.md", "p[v2].jsonl"])
def test_a_killed_write_is_removed_by_the_next_and_a_live_one_kept(tmp_path, name):
    """``ramer demo``'s demo.json and ``ramer tune``'s tables (folders no command holds: a study's
    processes share theirs) kept what a ``kill -9`` in a write left, one more at every kill; the next
    write of the file removes it, not the temporary another process is writing now."""
    live, kept = start_write(tmp_path / name)
    try:
        killed, gone = start_write(tmp_path / name)  # its own write leaves the live one alone
        killed.kill()
        killed.wait()
        killed.stdout.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([gone, kept])
        atomic_write_text(tmp_path / name, "mine")
        left = sorted(p.name for p in tmp_path.iterdir())
    finally:
        live.kill()
        live.wait()
        live.stdout.close()
    assert left == sorted([kept, name]) and (tmp_path / name).read_text() == "mine"


@pytest.mark.skipif(os.name != "posix", reason="no locks to tell a live write from a killed one")
def test_a_users_own_file_beside_the_output_is_not_taken_for_a_killed_write(tmp_path):
    """``ramer predict --out preds.jsonl`` writes in the user's folder: their own .preds.jsonl.draft.tmp
    there (no lock on it, as on a killed write's) was removed; only mkstemp's names are ``atomic_write``'s."""
    mine = [".preds.jsonl.draft.tmp", ".preds.jsonl.my.old.tmp", ".preds.jsonl.ABCDEFGH.tmp"]
    for name in [*mine, ".preds.jsonl.k1ll3d00.tmp"]:
        (tmp_path / name).write_text("kept?")
    atomic_write_text(tmp_path / "preds.jsonl", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*mine, "preds.jsonl"])


@pytest.mark.skipif(os.name != "posix", reason="pathconf's name limit; locks to tell a killed write")
def test_an_output_name_near_the_file_systems_limit_is_written_and_swept(tmp_path):
    """A name within 14 bytes of the file system's limit (255) is legal, but its temporary
    (.NAME.XXXXXXXX.tmp) was not: 'cannot write (File name too long)'. The temporary carries the
    name's first bytes (whole characters), and what a killed write of it left is still removed."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    for name in ("a" * (limit - 5), "é" * ((limit - 1) // 2)):
        stem = name.encode()[: limit - 14].decode(errors="ignore")
        killed = tmp_path / f".{stem}.k1ll3d00.tmp"
        killed.write_text("cut")
        atomic_write_text(tmp_path / name, "whole")
        assert (tmp_path / name).read_text() == "whole" and not killed.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == [name]
        (tmp_path / name).unlink()


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names there are text, not any bytes")
def test_an_output_name_of_bytes_that_are_not_utf8_is_written(tmp_path):
    """``ramer predict --out $'p\\xff.jsonl'`` ended in a UnicodeEncodeError: the name's temporary
    took its bytes as UTF-8. Short, and long enough that the temporary carries its first bytes."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    for raw in (b"p\xff.jsonl", b"\xfe" * (limit - 5)):
        name = os.fsdecode(raw)
        atomic_write_text(tmp_path / name, "whole")
        assert (tmp_path / name).read_text() == "whole"
        assert [os.fsencode(p.name) for p in tmp_path.iterdir()] == [raw]
        (tmp_path / name).unlink()


def test_a_held_folders_sweep_takes_only_the_temporaries_of_its_own_writes(tmp_path):
    """A command that holds its folder (``ramer bench --out``, which may be a folder the user had)
    removes what its killed writes left (``remove_temporaries``) by the same rule as an unheld one:
    mkstemp's names of the files it writes, not the user's own .report.md.draft.tmp."""
    mine = [".report.md.draft.tmp", ".report.md.my.old.tmp", ".report.md.ABCDEFGH.tmp", ".a.png.draft.tmp"]
    mine += [".notes.txt.k1ll3d00.tmp", ".report.md.bak.k1ll3d00.tmp"]  # other files': not names it writes
    for name in [*mine, ".report.md.k1ll3d00.tmp", ".a.png.k1ll3d00.tmp"]:
        (tmp_path / name).write_text("kept?")
    with hold(tmp_path, "ramer bench"):
        assert remove_temporaries(tmp_path, ("report.md", "*.png")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine)


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="no locks to tell a live write from a killed one")
def test_demo_and_tune_remove_what_a_killed_write_left(tmp_path, capsys):
    """The real commands into folders where a kill left a temporary of each file they write."""
    pytest.importorskip("optuna")
    tiny = ["data.synthetic.n_train=40", "data.synthetic.n_valid=20", "data.synthetic.n_test=20", "train.epochs=1"]
    sets = [x for s in [*tiny, "model.hidden=16", "model.ffn=32", "model.heads=2"] for x in ("--set", s)]
    written = {"demo": ("demo.json",), "tune": ("trials.csv", "trials.md", "best.yaml", "tune.json")}
    argv = {"demo": ["demo"], "tune": ["tune", "--model", "late_fusion", "--trials", "1"]}
    for command, names in written.items():
        out = tmp_path / command
        out.mkdir()
        for name in names:
            (out / f".{name}.k1ll3d00.tmp").write_text("cut")
        assert main([*argv[command], *sets, "--out", str(out)]) == 0, capsys.readouterr().err
        assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_the_stream_of_out_and_err_copies_and_pickles():
    """``cli.OUT``'s and ``ERR``'s file asked its own name in ``__getattr__``: a copy or an unpickled
    one, which has none before its state is set, recursed without end (RecursionError)."""
    import copy
    import pickle

    from ramer.cli import StreamFile

    for f in (copy.copy(StreamFile("stderr")), pickle.loads(pickle.dumps(StreamFile("stdout")))):
        assert f.name in ("stdout", "stderr") and f.isatty() == getattr(sys, f.name).isatty()


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "RUN", "--out", "OUT/p.jsonl"],
        ["view", "RUN", "--out", "OUT/p.html"],
        ["export", "RUN", "--onnx", "OUT/m.onnx"],
    ],
)
def test_a_closed_stdout_fails_no_command_whose_output_is_a_file(tiny_run, tmp_path, capsys, monkeypatch, argv):
    """`ramer predict RUN --out p.jsonl >&-`: the file is the output; the line saying it was written
    has nowhere to go, which fails nothing (exit 0, so a script's ``&& next`` goes on), where the
    file was written and then the command failed, exit 2, telling the user to give --out FILE."""
    from ramer.export import missing_onnx_packages

    if argv[0] == "export" and missing_onnx_packages():
        pytest.skip("ONNX export needs the optional packages (pip install 'ramer[onnx]')")
    run, _ = tiny_run
    argv = [str(run) if a == "RUN" else a.replace("OUT", str(tmp_path)) for a in argv]
    monkeypatch.setattr(sys, "stdout", None)  # what Python makes of a closed descriptor 1
    assert main(argv) == 0
    assert Path(argv[-1]).is_file()
    assert "error" not in capsys.readouterr().err


def test_predict_to_a_closed_stdout_is_refused_before_the_work(tiny_run, capsys, monkeypatch):
    """`ramer predict RUN --out - >&-`: the predictions would go nowhere; said before the run is
    loaded and scored, naming the flag that gives them a file."""
    import ramer.cli

    def no_work(args):
        raise AssertionError("the run was loaded")

    monkeypatch.setattr(ramer.cli, "load_run_and_data", no_work)
    monkeypatch.setattr(sys, "stdout", None)
    assert main(["predict", str(tiny_run[0]), "--out", "-"]) == 2
    assert capsys.readouterr().err == (
        "error: stdout: closed; the predictions have nowhere to go (redirect it to a file, or give --out FILE)\n"
    )


def test_a_closed_stdout_is_the_exit_code_of_a_command_line_too(tiny_run, tmp_path):
    """The same, as the shell runs it: `ramer predict RUN --out FILE >&- && next` goes on."""
    out = tmp_path / "p.jsonl"
    proc = with_stdout_closed(f"predict {shlex.quote(str(tiny_run[0]))} --out {shlex.quote(str(out))}")
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and proc.stderr == ""


@pytest.mark.parametrize(
    ("env", "bars"),
    [
        ({"FORCE_COLOR": "1"}, False),
        ({}, False),
        ({"TTY_INTERACTIVE": "1"}, False),  # rich draws no bar where it writes no terminal codes
        ({"FORCE_COLOR": "1", "TTY_INTERACTIVE": "1"}, True),
    ],
)
def test_force_color_in_a_log_gets_plain_lines_not_the_bars_redraws(tmp_path, monkeypatch, env, bars):
    """FORCE_COLOR=1 (set by many CI templates) made rich take a log file for a terminal: training's
    log held the progress bars' redraws (cursor codes, colours) instead of a plain line an
    epoch. Now the bars need a terminal, or rich's own switch TTY_INTERACTIVE=1; FORCE_COLOR still
    gives colour where colour is printed."""
    from test_recipe import tiny_cfg

    from ramer.console import PlainConsole
    from ramer.data.synthetic import generate
    from ramer.train import recipe as recipe_mod
    from ramer.train.recipe import Recipe

    for name in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(recipe_mod, "LOG_EVERY", 0.0)  # a how-far line at every step, where no bar is drawn
    cfg = tiny_cfg(extra=["train.epochs=1", "data.synthetic.n_train=64"])
    with (tmp_path / "log.txt").open("w", encoding="utf-8") as log:
        console = PlainConsole(file=log, stderr=True)
        Recipe(cfg, tmp_path / "run", bundle=generate(cfg.data.synthetic), console=console).run()
    written = (tmp_path / "log.txt").read_text(encoding="utf-8")
    assert ("\x1b[" in written) == bars, repr(written[:300])  # the bars' cursor codes, or none
    assert bars or re.match(r"(epoch 1: step \d+ of \d+ .*\n)+epoch 1/1 +loss [0-9.]+ ", written), written


def test_on_a_terminal_tty_interactive_0_gives_the_plain_lines(monkeypatch):
    """rich before 14 reads no TTY_INTERACTIVE: ``console.live`` reads it itself, so that 0 gives the
    plain lines on a terminal whatever rich's version (pyproject takes rich 13)."""
    from ramer.console import PlainConsole, live

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for name in ("FORCE_COLOR", "TTY_INTERACTIVE", "TTY_COMPATIBLE", "TERM"):
        monkeypatch.delenv(name, raising=False)
    assert live(PlainConsole(file=Terminal()))
    monkeypatch.setenv("TTY_INTERACTIVE", "0")
    console = PlainConsole(file=Terminal())
    console.is_interactive = True  # as rich 13 makes it, reading no TTY_INTERACTIVE
    assert not live(console)
    monkeypatch.setenv("TERM", "dumb")
    monkeypatch.delenv("TTY_INTERACTIVE")
    assert not live(PlainConsole(file=Terminal()))  # no bar on a dumb terminal


def test_a_ctrl_c_that_came_while_a_finaliser_ran_still_stops_the_command(monkeypatch, capsys):
    """Ctrl-C while a finaliser runs (a weakref's callback: often during ramer tune's study work) is
    an exception Python cannot raise: "Exception ignored in", and the command went on to its end,
    exit 0. It is delivered again, and the command stops: 130."""
    from ramer import cli

    class Finalised:
        def __del__(self):
            raise KeyboardInterrupt  # as a Ctrl-C that arrives while it runs

    went_on = []

    def command(args):
        Finalised()
        time.sleep(10)  # what the command does next (the signal delivered again ends it)
        went_on.append(True)
        return 0

    monkeypatch.setattr(cli, "cmd_eval", command)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal's process
    try:
        assert main(["eval", "run"]) == 130
    finally:
        signal.signal(signal.SIGINT, before)
    assert went_on == [] and capsys.readouterr().err == "interrupted\n"
