"""What ``pip install ramer`` gives, built the way a user's pip builds it: an sdist from the
checkout's files, a wheel from that sdist, the wheel's code run from outside the source tree. The
other tests run the editable install, which reads src/ and finds every file of the repository."""

import ast
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "ramer"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD = "import sys; from setuptools import build_meta as b; print(b.build_{}(sys.argv[1]))"


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[@]", spec, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.match(r"\d+(?:\.\d+)*", version).group().split("."))


def _checkout_files() -> list[str]:
    """The files a clone of the working tree holds (tracked, or new and not ignored)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    got = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if got.returncode:
        pytest.skip(f"not a git checkout: {got.stderr.strip()}")
    return [f for f in got.stdout.splitlines() if (ROOT / f).is_file() and not (ROOT / f).is_symlink()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An sdist of a clean copy of the checkout, and the wheel pip builds from that sdist (offline:
    the venv's setuptools, no build isolation)."""
    floor = re.search(r"setuptools>=([\d.]+)", " ".join(PYPROJECT["build-system"]["requires"]))
    have = importlib.metadata.version("setuptools") if importlib.util.find_spec("setuptools") else None
    if have is None or _release(have) < _release(floor.group(1)):
        pytest.skip(f"the build needs setuptools>={floor.group(1)} in this venv, which has {have}")
    tmp = tmp_path_factory.mktemp("install")
    clone = tmp / "clone"
    for f in _checkout_files():
        (clone / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, clone / f)
    dist = tmp / "dist"
    dist.mkdir()
    out = subprocess.run([sys.executable, "-c", BUILD.format("sdist"), dist], cwd=clone, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    sdist = dist / out.stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
        # the filter where this Python has it (3.11.4, 3.10.12 on): the sdist is this checkout's own
        tar.extractall(tmp / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp / "unpacked").iterdir()
    out = subprocess.run(
        [sys.executable, "-c", BUILD.format("wheel"), dist], cwd=unpacked, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return {"sdist": set(names), "wheel": dist / out.stdout.strip().splitlines()[-1], "tmp": tmp}


def test_the_sdist_ships_no_half_test_suite(built):
    """setuptools puts tests/test*.py in an sdist by default, but not conftest.py, the fixture
    writers, nor the docs, benchmarks and examples the tests read: ``pytest`` on the unpacked sdist then
    fails to collect half the modules. Either every file the tests need, or no tests."""
    tracked = _checkout_files()
    shipped = built["sdist"]
    assert {"pyproject.toml", "README.md", "LICENSE"} <= shipped
    assert [f for f in tracked if f.startswith("src/ramer/") and f not in shipped] == []
    if any(f.startswith("tests/") for f in shipped):
        needed = [f for f in tracked if f.split("/")[0] in ("tests", "docs", "benchmarks", "examples")]
        assert [f for f in needed if f not in shipped] == []


def test_a_wheel_built_from_the_sdist_holds_the_package(built):
    """The wheel a user's pip builds from the sdist: every file of src/ramer (code, configs, the
    view template), the console script pyproject names, and the declared dependencies."""
    with zipfile.ZipFile(built["wheel"]) as whl:
        names = whl.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        scripts = whl.read(f"{info}/entry_points.txt").decode()
        metadata = whl.read(f"{info}/METADATA").decode()
    source = {
        p.relative_to(PACKAGE.parent).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    }
    assert {n for n in names if not n.startswith(info)} == source
    assert f"ramer = {PYPROJECT['project']['scripts']['ramer']}" in scripts
    declared = {_requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    required = {
        _requirement_name(line[len("Requires-Dist: ") :])
        for line in metadata.splitlines()
        if "extra ==" not in line and line.startswith("Requires-Dist: ")
    }
    assert required == declared


@pytest.mark.slow
def test_the_wheel_runs_outside_the_source_tree(built, tmp_path):
    """The wheel's files, unpacked as pip would into a folder of their own, run from elsewhere: a
    named config (``--config NAME``, package data), training and ``ramer view`` (its HTML template),
    with ``ramer`` imported from that folder, not src/ (one process: two startups cost 4 s more)."""
    site = tmp_path / "site"
    with zipfile.ZipFile(built["wheel"]) as whl:
        whl.extractall(site)
    tiny = [
        "data.synthetic.n_train=16",
        "data.synthetic.n_valid=8",
        "data.synthetic.n_test=8",
        "train.epochs=1",
        "model.hidden=16",
        "train.batch_size=8",
        "train.threads=1",
    ]
    train = ["train", "--model", "late_fusion", "--config", "synthetic", "--out", "run"]
    train += [a for s in tiny for a in ("--set", s)]
    script = (
        "import sys, ramer; from ramer.cli import main; print(ramer.__file__); "
        f"sys.exit(main({train!r}) or main(['view', 'run', '--out', 'scenes.html']))"
    )
    env = {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    got = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert got.returncode == 0, got.stderr[-2000:]
    assert Path(got.stdout.splitlines()[0]).is_relative_to(site), got.stdout[:500]
    assert "<html" in (tmp_path / "scenes.html").read_text().lower()


def test_every_third_party_import_is_a_declared_requirement():
    """A module that imports a package which pyproject names neither as a dependency nor in an
    extra works here (the dev venv holds every extra, and what they pull in) and breaks for a user
    whose pip resolves another set."""
    project = PYPROJECT["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    declared |= {_requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    owners = importlib.metadata.packages_distributions()
    undeclared = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "ramer":
                    continue
                dists = {_requirement_name(d) for d in owners.get(top, [top])}
                if not dists & declared:
                    undeclared.setdefault(top, []).append(path.relative_to(PACKAGE).as_posix())
    assert undeclared == {}
