"""The documentation works: every ```python block in docs/*.md runs, in order, page by page,
and ``mkdocs build --strict`` builds the site without a warning.

A block may opt out with ``<!-- not-tested -->`` on the line before its fence; none should need
to.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_MARKER = "<!-- not-tested -->"
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number, code)`` of each ```python block not preceded by the skip marker."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        if before and before[-1].strip() == SKIP_MARKER:
            continue
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


PAGES = sorted(DOCS.glob("*.md"))


def test_the_docs_have_examples_to_run():
    assert {page.name for page in PAGES} >= {
        "index.md",
        "quickstart.md",
        "lme4.md",
        "random-slopes.md",
        "diagnostics.md",
    }
    assert sum(len(python_blocks(page.read_text(encoding="utf-8"))) for page in PAGES) >= 10


def test_block_extraction_honours_the_skip_marker():
    text = "x\n```python\na = 1\n```\n\n<!-- not-tested -->\n```python\nb = 2\n```\n"
    assert python_blocks(text) == [(2, "a = 1\n")]


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_every_python_block_runs(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace: dict[str, object] = {"__name__": f"docs.{page.stem}"}
    for line, code in python_blocks(page.read_text(encoding="utf-8")):
        compiled = compile(code, f"{page.relative_to(ROOT)}:{line}", "exec")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pages show warnings on purpose
            try:
                exec(compiled, namespace)
            except Exception as error:
                pytest.fail(f"the example at {page.name} line {line} failed: {error!r}")
    capsys.readouterr()


def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not [line for line in output.splitlines() if "WARNING" in line], output
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "LmmResult" in api and "list_datasets" in api
