"""What a user's ``pip install ramer`` gets: every file of the package that is not Python code is
package data, the console script's target exists, and the licence the metadata names ships its text;
and the test extra's per-test time limit holds."""

import importlib
import re
import subprocess
import sys
from glob import glob
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ramer"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_file_of_the_package_is_code_or_package_data():
    """A template or config added beside the code, not in ``[tool.setuptools.package-data]``, is in
    an editable install (these tests) and missing from a wheel: ``ramer view`` or ``--config NAME``
    would fail only for users."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["ramer"]
    files = [
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"
    ]
    # as setuptools reads a pattern: a glob in the package's folder, whose * stops at a "/" (fnmatch's
    # does not: configs/*.yaml took a configs/more/x.yaml, which the wheel then lacked, as covered)
    covered = {
        pat: {Path(p).relative_to(PACKAGE).as_posix() for p in glob(str(PACKAGE / pat), recursive=True)}
        for pat in patterns
    }
    assert files and [f for f in files if not any(f in got for got in covered.values())] == []
    assert [pat for pat, got in covered.items() if not got] == []  # none names nothing


def test_the_console_script_names_a_function_that_exists():
    module, func = PYPROJECT["project"]["scripts"]["ramer"].split(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_the_licence_the_metadata_names_ships_its_text():
    project = PYPROJECT["project"]
    assert project["license"] == "MIT"
    texts = [ROOT / f for f in project["license-files"]]
    assert texts and all(p.is_file() for p in texts)
    assert re.match(r"MIT License\n\nCopyright \(c\) \d{4} ", texts[0].read_text())


def test_a_test_that_hangs_fails_alone(tmp_path):
    """The suite's ``timeout`` (pytest-timeout) fails a test that hangs and goes on to the next, so a
    hang costs CI one failed test, not the whole run's time. Here with the project's own settings,
    the limit lowered for a test that sleeps past it."""
    assert PYPROJECT["tool"]["pytest"]["ini_options"]["timeout"] > 0
    (tmp_path / "test_hang.py").write_text(
        "import time\n\ndef test_hangs():\n    time.sleep(60)\n\ndef test_after():\n    pass\n"
    )
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml")]
    cmd += ["--rootdir", str(tmp_path), "-o", "timeout=2", str(tmp_path / "test_hang.py")]
    got = subprocess.run(cmd, capture_output=True, text=True, timeout=50, cwd=tmp_path)
    assert got.returncode == 1, got.stdout[-2000:] + got.stderr[-2000:]
    assert "Timeout" in got.stdout and "1 failed, 1 passed" in got.stdout
