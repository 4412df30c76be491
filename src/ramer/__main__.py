"""``python -m ramer`` (what ``torchrun -m ramer`` runs) and the ``ramer`` console script (``run``).

A rank that torchrun launched ends with ``os._exit`` once its command has returned (its files are
written and its process group is destroyed): the interpreter's own teardown, where torch's C++
destructors run, aborted now and then (SIGABRT, "terminate called without an active exception",
with no Python frame), and torchrun then reported the whole run as failed and stopped the other
ranks (``dist.end_process``)."""

import os
import signal
import sys


def fill_standard_descriptors() -> None:
    """Open the null device on each of descriptors 0, 1 and 2 the command was started without
    (``2>&-``): the first file the command opened took the lowest free one, and what C libraries
    write to stderr (torch's and onnxruntime's logs) went into that file (a run's metrics.jsonl, a
    model file). Python's ``sys.stdout`` and ``sys.stderr`` stay None, as it made them: the CLI
    still says that stdout is closed, and prints nothing to a closed stderr."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            try:  # the lowest free descriptor: this one (those below are open)
                null = os.open(os.devnull, os.O_RDWR)
            except OSError:  # no null device to open: as before
                return
            os.set_inheritable(null, True)  # so for the processes it starts (bench --jobs, --nproc) too


def run() -> int:
    """The command's exit code. ``ramer.cli`` is imported here, not above: Ctrl-C while it imports
    (pydantic, rich, yaml: a few tenths of a second) was Python's traceback from the console script
    or runpy, outside ``cli.main``'s own answer; now it is the same ``interrupted`` line, 130. Once
    the command has returned, Ctrl-C is ignored: the exit code is the command's."""
    fill_standard_descriptors()
    try:
        from ramer.cli import main
    except KeyboardInterrupt:
        try:  # os.write: nothing left in a buffer for Python's flush at exit (``2>/dev/full``)
            if sys.stderr is not None:  # ``2>&-``: nowhere to say it (descriptor 2 is the null device)
                os.write(2, b"interrupted\n")
        except OSError:
            pass
        return 130
    code = main()
    # done: its files written, its last line printed; a Ctrl-C in the teardown that follows (a few
    # tenths of a second: torch's) ended the process by SIGINT, which a script takes for a failure
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    code = run()
    if "ramer.cli" in sys.modules:  # not where Ctrl-C cut its import short: torch not loaded, nothing to end
        from ramer.dist import end_process, launched

        if launched():
            end_process(code)
    sys.exit(code)
