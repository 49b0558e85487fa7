"""The exceptions and warnings interlace raises.

Every error is an :class:`InterlaceError`, itself a :class:`ValueError`, so code that already
catches ``ValueError`` keeps working; each message names the column, term or level at fault.
Statistical trouble (a boundary fit, a doubtful optimum, aliased fixed effects) is a warning,
as lme4 warns, never an error.
"""

from __future__ import annotations

__all__ = [
    "InterlaceError",
    "FormulaError",
    "DataError",
    "InputTypeError",
    "NumericalError",
    "InterlaceWarning",
    "SingularFitWarning",
    "ConvergenceWarning",
    "RankDeficiencyWarning",
]


class InterlaceError(ValueError):
    """Base class of every error raised by interlace."""


class FormulaError(InterlaceError):
    """A formula or random-effects term that cannot be parsed or does not fit the data."""


class DataError(InterlaceError):
    """The data cannot support the model: a missing column, non-finite values, too few levels..."""


class InputTypeError(InterlaceError, TypeError):
    """An argument of the wrong type (for example a response that is not numeric)."""


class NumericalError(InterlaceError):
    """The numerical core could not complete (a matrix that is not positive definite, ...)."""


class InterlaceWarning(UserWarning):
    """Base class of every warning issued by interlace."""


class SingularFitWarning(InterlaceWarning):
    """The fit is on the boundary: a variance is zero or a correlation is ±1 (lme4's isSingular)."""


class ConvergenceWarning(InterlaceWarning):
    """The optimiser stopped without meeting its convergence criteria."""


class RankDeficiencyWarning(InterlaceWarning):
    """The fixed-effects model matrix is rank deficient; aliased columns were dropped."""
