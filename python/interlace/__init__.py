"""interlace: linear mixed-effects models with lme4's semantics and a Rust core."""

from interlace import datasets, plots  # plots imports matplotlib only when drawing
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
    hlm_augment,
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
    "hlm_augment",
    "hlm_influence",
    "hlm_resid",
    "leverage",
    "mdffits",
    "rvc",
    "n_influential",
    "anova",
    "contest",
    "__version__",
    "datasets",
    "plots",
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


def __getattr__(name: str) -> object:
    # n_influential lives with the plots (HLMdiag's dotplot_diag cutoffs); looked up on first use.
    if name == "n_influential":
        return plots.n_influential
    raise AttributeError(f"module 'interlace' has no attribute {name!r}")
