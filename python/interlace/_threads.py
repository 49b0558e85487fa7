"""BLAS kept on one thread while interlace works.

The Rust core owns the machine's cores (rayon). numpy's BLAS (OpenBLAS by default) starts a
thread per core, and after each call its threads spin for a while waiting for the next one: on
a 2-core machine they then take the core a fit's second rayon thread needs. Measured on the
development VM without ``OPENBLAS_NUM_THREADS=1``: the InstEval fits 8–15 % slower and
sleepstudy's 1.5 ms fit at 2.3 ms. interlace's own BLAS calls (QR and products of the fixed
part, small dense algebra) gain nothing from threads. So the body of every public entry point that
reaches the core runs inside :func:`single_threaded_blas` (threadpoolctl, the library
scikit-learn uses for the same purpose), and the caller's setting is restored when the
outermost one returns. A ``with`` block rather than a decorator: a wrapper's frame would take
the place of the caller's in the warnings these functions issue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_depth = 0
_limiter: Any = None
_controller: Any = None


def _blas_controller() -> Any:
    """threadpoolctl's controller of the BLAS libraries loaded now (found once: 10 ms), or None
    without threadpoolctl."""
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a declared dependency
            _controller = False
        else:
            _controller = ThreadpoolController().select(user_api="blas")
    return _controller or None


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """BLAS on one thread inside the block. Nested and concurrent blocks (fits on several
    Python threads) share one limit, set by the first to enter and restored by the last to
    leave, so the caller's setting always comes back."""
    global _depth, _limiter
    with _lock:
        if _depth == 0:
            controller = _blas_controller()
            _limiter = None if controller is None else controller.limit(limits=1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _limiter is not None:
                _limiter.restore_original_limits()
                _limiter = None
