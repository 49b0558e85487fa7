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
from interlace.inference import anova, contest
from interlace.influence import (
    cooks_distance,
    covratio,
    covtrace,
    hlm_influence,
    hlm_resid,
    leverage,
    mdffits,
    rvc,
)

__all__ = [
    "fit",
    "cooks_distance",
    "covratio",
    "covtrace",
    "hlm_influence",
    "hlm_resid",
    "leverage",
    "mdffits",
    "rvc",
    "anova",
    "contest",
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
