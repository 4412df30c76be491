"""``python -m ramer`` (what ``torchrun -m ramer`` runs).

A rank that torchrun launched ends with ``os._exit`` once its command has returned (its files are
written and its process group is destroyed): the interpreter's own teardown, where torch's C++
destructors run, aborted now and then (SIGABRT, "terminate called without an active exception",
with no Python frame), and torchrun then reported the whole run as failed and stopped the other
ranks (``dist.end_process``)."""

import sys

from ramer.cli import main
from ramer.dist import end_process, launched

code = main()
if launched():
    end_process(code)
sys.exit(code)
