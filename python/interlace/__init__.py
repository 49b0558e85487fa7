"""interlace: linear mixed-effects models with lme4's semantics and a Rust core."""

from interlace import datasets
from interlace._core import __version__
from interlace.api import fit
from interlace.exceptions import (
    ConvergenceWarning,
    DataError,
    FormulaError,
    InputTypeError,
    InterlaceError,
    InterlaceWarning,
    NumericalError,
    RankDeficiencyWarning,
    SingularFitWarning,
)

__all__ = [
    "fit",
    "__version__",
    "datasets",
    "ConvergenceWarning",
    "DataError",
    "FormulaError",
    "InputTypeError",
    "InterlaceError",
    "InterlaceWarning",
    "NumericalError",
    "RankDeficiencyWarning",
    "SingularFitWarning",
]
