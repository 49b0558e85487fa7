"""How the trimmed copy of exam_slopes.json was made.

The shared conformance file is 2.1 MB, of which 2 MB are two per-observation HLMdiag tables
(``hlmdiag_level1``: residuals, ``hlmdiag_level1_influence``: one-step deletion diagnostics,
4059 rows each). The core tests need none of it, so the copy here drops exactly those two keys
and keeps everything else verbatim, including every key the core tests read:

    id, dataset, method, interlace, factor_columns, nobs, ngrps, fixef, fixef_se, vcov, theta,
    sigma, varcorr, logLik, objective, AIC, BIC, singular, ranef, fitted, resid, hatvalues,
    satterthwaite_df, p_values

and the group-level HLMdiag results (``hlmdiag_group``, ``hlmdiag_group_exact``), which are
small. The other reference files are copied unchanged.

Usage (from the repository root):

    python tests/data/reference/_trim.py /work/shared/reference/exam_slopes.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DROPPED = ("hlmdiag_level1", "hlmdiag_level1_influence")
REQUIRED = (
    "id dataset method interlace factor_columns nobs ngrps fixef fixef_se vcov theta sigma "
    "varcorr logLik objective AIC BIC singular ranef fitted resid hatvalues satterthwaite_df "
    "p_values"
).split()


def trim(source: Path, target: Path) -> None:
    reference = json.loads(source.read_text())
    missing = [key for key in REQUIRED if key not in reference]
    if missing:
        raise SystemExit(f"{source} lacks keys the core tests need: {missing}")
    kept = {key: value for key, value in reference.items() if key not in DROPPED}
    # Compact separators: the values are copied as parsed, so every float round-trips exactly.
    target.write_text(json.dumps(kept, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    source = Path(sys.argv[1])
    trim(source, Path(__file__).resolve().parent / source.name)
