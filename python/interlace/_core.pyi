"""Typed boundary of the compiled core (``interlace._core``). Users never import it.

Conventions: arrays in are float64 (matrices Fortran-ordered) and int32 level codes, validated in
Python before they get here; arrays out are fresh (moved out of Rust, never aliased).

Random-effects terms are given in lme4's order (sorted by number of levels, descending). Term k
has ``n_levels[k]`` levels, ``q_k = z[k].shape[1]`` columns and a lower-triangular relative
covariance factor λ_k whose lower triangle, column-major, is that term's slice of θ
(q_k (q_k + 1) / 2 entries; lower bound 0 on the diagonal, -inf elsewhere; lme4's start:
1 on the diagonal, 0 elsewhere).
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

class Model:
    """The blocked crossproduct of [Z X y], formed once; the factor L(θ) updated per θ."""

    def __init__(
        self,
        y: npt.NDArray[np.float64],
        x: npt.NDArray[np.float64],
        codes: list[npt.NDArray[np.int32]],
        z: list[npt.NDArray[np.float64]],
        n_levels: list[int],
        reml: bool,
        weights: npt.NDArray[np.float64] | None = None,
    ) -> None:
        """``weights``: prior weights (lme4's), finite and positive; residual variance σ²/wᵢ."""
    @property
    def n_theta(self) -> int: ...
    @property
    def lower_bounds(self) -> npt.NDArray[np.float64]: ...
    @property
    def theta_start(self) -> npt.NDArray[np.float64]: ...
    def objective(self, theta: npt.NDArray[np.float64]) -> float:
        """REML criterion (reml=True) or deviance, -2 log-likelihood, profiled over β and σ."""
    def deviance_parts(self, theta: npt.NDArray[np.float64]) -> tuple[float, float, float]:
        """(log|L_θ|² - log|W|, log|R_X|², r²) at θ; r² is the penalised residual sum of
        squares, W the prior weights (log|W| = 0 without). The
        unprofiled -2 log-likelihood at σ is log|L_θ|² [+ log|R_X|² for REML] + dof·log(2πσ²)
        + r²/σ², dof = n - p (REML) or n (ML)."""
    def beta_covariance(
        self, theta: npt.NDArray[np.float64]
    ) -> tuple[float, npt.NDArray[np.float64]]:
        """(σ̂, cov(β̂)) at θ, p × p: what ``estimates`` gives for them, without the random
        effects and their conditional variances."""
    def fit(
        self,
        theta0: npt.NDArray[np.float64] | None = None,
        rho_begin: float = 0.2,
        rho_end: float = 1e-6,
        max_evals: int = 0,
        conditional_covariances: bool = True,
    ) -> dict[str, Any]:
        """Optimise θ (BOBYQA), then return :meth:`estimates` at the optimum plus the record:
        ``n_evals`` (int), ``status`` (str), ``converged`` (bool), ``gradient`` (finite
        differences of the objective at θ̂, (n_theta,)), ``scaled_gradient`` (lme4's R⁻¹g with
        H = RᵀR, (n_theta,) with NaN at bounds, or empty when max |gradient| ≤ 2e-3).
        With ``conditional_covariances=False``, ``b_cond_cov`` is None (not formed)."""
    def estimates(self, theta: npt.NDArray[np.float64]) -> dict[str, Any]:
        """Everything at a given θ: ``theta`` (n_theta,), ``objective`` (float), ``beta`` (p,),
        ``sigma`` (float), ``beta_cov`` (p, p), ``b`` (list per term of (n_levels, q) conditional
        modes on the data scale), ``b_cond_cov`` (list per term of (n_levels, q, q) conditional
        covariances, σ² Λ (Λ'Z'ZΛ + I)⁻¹ Λ' blocks as lme4's condVar), ``fitted`` (n,),
        ``resid`` (n,)."""

# ---- influence diagnostics (src/influence.rs) ----
# Deletion sets are given as ``rows`` (int64, all sets concatenated) and ``offsets`` (int64,
# len = number of sets + 1, offsets[0] = 0): set s is rows[offsets[s]:offsets[s + 1]].
# ``n_jobs`` is the number of worker threads, 0 for all cores; results do not depend on it.

def leverage(model: Model, theta: npt.NDArray[np.float64], n_jobs: int = 0) -> dict[str, Any]:
    """HLMdiag's leverages at θ, each (n,): ``overall`` (diagonal of the hat matrix of
    ŷ = Xβ̂ + Zb̂, lme4's hatvalues), ``fixef`` (H₁ = X C XᵀV⁻¹), ``ranef`` (overall − fixef)
    and ``ranef_uc`` (diagonal of ZΛΛᵀZᵀ)."""

def one_step_deletion(
    model: Model,
    theta: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    n_jobs: int = 0,
) -> dict[str, Any]:
    """HLMdiag's one-step deletion diagnostics at θ (θ, σ held fixed), one value per set:
    ``cooksd``, ``mdffits``, ``covtrace``, ``covratio`` (NaN where a set cannot be deleted)."""

def marginal_residuals(
    model: Model, theta: npt.NDArray[np.float64], cholesky: bool = False
) -> dict[str, Any]:
    """``fitted`` (Xβ̂), ``resid`` (y − Xβ̂), both (n,), and ``cholesky``: L_V⁻¹(y − Xβ̂) for the
    lower Cholesky factor of V = σ²(I + ZΛΛᵀZᵀ) in row order (n,), or None."""

def delete_and_refit(
    model: Model,
    theta_hat: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64],
    offsets: npt.NDArray[np.int64],
    n_jobs: int = 0,
    rho_begin: float = 0.2,
    rho_end: float = 1e-6,
    max_evals: int = 0,
) -> dict[str, Any]:
    """Refit θ (BOBYQA from ``theta_hat``) without each set of rows, in parallel; per set
    (in input order): ``theta`` (sets, n_theta), ``beta`` (sets, p), ``beta_cov``
    (sets, p, p), ``sigma``, ``objective`` (sets,), ``n_evals`` (int64), ``converged`` (bool),
    ``errors`` (list of str or None; NaN estimates where a refit failed)."""

# ---- simulation and bootstrap (src/bootstrap.rs) ----
# Seeds are 0 ≤ seed < 2**64; replicate r's random numbers depend only on (seed, r), so results
# do not depend on ``n_jobs`` (worker threads, 0 for all cores).

def simulate_responses(
    model: Model,
    theta_hat: npt.NDArray[np.float64],
    nsim: int,
    seed: int,
    conditional: bool = False,
) -> npt.NDArray[np.float64]:
    """(nsim, n): responses simulated at θ̂ with β̂, σ̂ the estimates there: Xβ̂ + Zb* + σ̂ε*
    with new b* = σ̂Λu* (lme4's use.u = FALSE), or with the modes b̂ when ``conditional``."""

def parametric_bootstrap(
    model: Model,
    theta_hat: npt.NDArray[np.float64],
    nsim: int,
    seed: int,
    n_jobs: int = 0,
    progress: Callable[[int], object] | None = None,
    rho_begin: float = 0.2,
    rho_end: float = 1e-6,
    max_evals: int = 0,
) -> dict[str, Any]:
    """Refit θ (BOBYQA from ``theta_hat``) to ``nsim`` responses simulated at θ̂ (new random
    effects), in parallel; per replicate, in order: ``theta`` (nsim, n_theta), ``beta``
    (nsim, p), ``sigma``, ``objective`` (nsim,), ``n_evals`` (int64), ``converged`` (bool),
    ``errors`` (list of str or None; NaN estimates where a refit failed). ``progress(done)``
    is called now and then from the calling thread; Ctrl-C raises KeyboardInterrupt."""

def _panic_for_testing(in_workers: bool = False) -> None:
    """Panics inside the core's guard (on this thread or in rayon workers); always raises
    ``interlace.exceptions.NumericalError``. For the test suite."""
