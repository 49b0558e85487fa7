"""The numpydoc examples of the public API run, against the installed package."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "interlace.api",
    "interlace.results",
    "interlace.inference",
    "interlace.influence",
    "interlace.bootstrap",
    "interlace.formula",
    "interlace.design",
    "interlace.datasets",
    "interlace.datasets._simulate",
    "interlace.plots",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    if name == "interlace.plots":
        pytest.importorskip("matplotlib")
    module = importlib.import_module(name)
    outcome = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert outcome.failed == 0
