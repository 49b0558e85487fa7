"""Packaging: one version, an sdist with what a source build needs, and (slow) an abi3 wheel
that installs and fits outside the source tree."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import interlace

ROOT = Path(__file__).resolve().parent.parent


def cargo_version() -> str:
    """The package version from Cargo.toml's [package] table (no tomllib on Python 3.10)."""
    package = (ROOT / "Cargo.toml").read_text().split("[package]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version = "([^"]+)"$', package, re.MULTILINE).group(1)


def maturin(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "maturin", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_the_version_lives_in_cargo_toml_only():
    version = cargo_version()
    assert interlace.__version__ == version
    assert importlib.metadata.version("interlace") == version
    project = (ROOT / "pyproject.toml").read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r"^version\s*=", project, re.MULTILINE) is None
    assert 'dynamic = ["version"]' in project


def test_sdist_has_what_a_source_build_needs(tmp_path):
    maturin("sdist", "--out", str(tmp_path))
    (archive,) = tmp_path.glob("interlace-*.tar.gz")
    assert archive.name == f"interlace-{cargo_version()}.tar.gz"
    with tarfile.open(archive) as tar:
        top = f"interlace-{cargo_version()}/"
        names = {name.removeprefix(top) for name in tar.getnames()}
        pkg_info = tar.extractfile(top + "PKG-INFO").read().decode()
    tracked = subprocess.run(
        ["git", "ls-files", "src", "python"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout: the tracked source files are unknown")
    required = {"Cargo.toml", "Cargo.lock", "pyproject.toml", "README.md", "LICENSE", *tracked}
    assert required <= names, sorted(required - names)
    assert "python/interlace/datasets/reading_times.csv" in names
    # No build products, and no test fixtures (their GPL datasets stay in the repository).
    assert not [name for name in names if name.endswith((".so", ".pyd"))]
    assert not [name for name in names if name.startswith(("tests/", "target"))]
    assert f"\nVersion: {cargo_version()}\n" in pkg_info


@pytest.mark.slow
def test_abi3_wheel_builds_installs_and_fits(tmp_path):
    # `maturin build --release` as the issue asks; the repository's target/ is reused if there.
    maturin("build", "--release", "--out", str(tmp_path / "wheels"))
    (wheel,) = (tmp_path / "wheels").glob("*.whl")
    assert re.fullmatch(
        rf"interlace-{re.escape(cargo_version())}-cp310-abi3-\w+\.whl", wheel.name
    ), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = archive.read(
            f"interlace-{cargo_version()}.dist-info/entry_points.txt"
        ).decode()
    assert {
        "interlace/_core.abi3.so",
        "interlace/__init__.py",
        "interlace/py.typed",
        "interlace/_core.pyi",
        "interlace/datasets/reading_times.csv",
    } <= names
    assert "interlace=interlace.cli:main" in entry_points.replace(" ", "")

    # Installed into a fresh environment, run outside the tree. Its dependencies come from
    # this environment's site-packages, listed in a .pth file (--system-site-packages would give
    # the base interpreter's, which need not have them when this one is a virtualenv).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    venv_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(venv_site, "_outer_environment.pth").write_text("".join(f"{p}\n" for p in here))
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--force-reinstall",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": ""}
    script = (
        "import interlace, pathlib; "
        "assert 'site-packages' in interlace.__file__, interlace.__file__; "
        "df = interlace.datasets.load('reading_times'); "
        "res = interlace.fit('rt ~ condition + (1 | subject) + (1 | item)', data=df); "
        "print(interlace.__version__, res.nobs, round(res.llf, 6))"
    )
    out = subprocess.run(
        [str(python), "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    reference = interlace.fit(
        "rt ~ condition + (1 | subject) + (1 | item)",
        data=interlace.datasets.load("reading_times"),
    )
    assert out.stdout.split() == [
        cargo_version(),
        str(reference.nobs),
        str(round(reference.llf, 6)),
    ]
