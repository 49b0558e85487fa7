"""Writes one benchmark case's core inputs to a directory, for timing the core without Python.

    python benches/dump_model.py movielens_1m /tmp/dump/movielens_1m
    cargo run --release --example dumped_model -- /tmp/dump/movielens_1m 10

Files: ``y.bin`` (n float64), ``x.bin`` (n × p float64, column-major), ``c{k}.bin`` (n int32
level codes of term k), ``z{k}.bin`` (n × q float64, row-major) and ``meta.json``.
"""

from __future__ import annotations

import json
import pathlib
import sys

import cases
import numpy as np

from interlace import design as dz
from interlace.formula import parse_formula


def main(name: str, out: str) -> None:
    case = next(c for c in cases.CASES if c.name == name)
    design = dz.build_design(parse_formula(case.formula), case.dataset.make())
    path = pathlib.Path(out)
    path.mkdir(parents=True, exist_ok=True)
    n = len(design.y)
    np.ascontiguousarray(design.y, dtype=np.float64).tofile(path / "y.bin")
    np.asarray(design.x, dtype=np.float64).T.copy().tofile(path / "x.bin")
    terms = []
    for k, term in enumerate(design.terms):
        z = np.asarray(term.z, dtype=np.float64).reshape(n, -1)
        np.ascontiguousarray(term.codes, dtype=np.int32).tofile(path / f"c{k}.bin")
        np.ascontiguousarray(z).tofile(path / f"z{k}.bin")
        terms.append({"q": int(z.shape[1]), "levels": int(term.n_levels)})
    meta = {"n": n, "p": int(design.x.shape[1]), "reml": case.method == "REML", "terms": terms}
    (path / "meta.json").write_text(json.dumps(meta))
    print(meta)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
