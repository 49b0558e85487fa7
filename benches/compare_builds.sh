#!/usr/bin/env bash
# Whole-fit times of two builds of interlace, alternating in rounds (one process per build and
# round), so that both see the same machine: a shared VM's speed drifts by tens of percent
# within minutes, which a grid run minutes apart cannot separate from a change.
#
#   benches/compare_builds.sh <rev-A> <rev-B> <rounds> <fits per round> <case>...
#
# A revision is a git commit or WORKTREE (the work tree as it is). Each is built (release, the
# "python" feature) into /tmp/interlace-compare/<name>; cases are benches/cases.py names, or
# ml / reml for the two InstEval cases. Prints the median, lower quartile and minimum per build.
# BLAS runs on one thread (OMP_NUM_THREADS=1 etc.) unless COMPARE_BLAS=default, which leaves
# the environment as it is (numpy's BLAS then starts a thread per core, as for most users).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
root=/tmp/interlace-compare
a=$1 b=$2 rounds=$3 fits=$4
shift 4
if [ "${COMPARE_BLAS:-one}" != default ]; then
    export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
fi

build() {
    local rev=$1 name=$2 src
    rm -rf "$root/$name" && mkdir -p "$root/$name"
    if [ "$rev" = WORKTREE ]; then
        src=$repo
    else
        src=$root/src-$name
        git -C "$repo" worktree remove --force "$src" 2>/dev/null || true
        git -C "$repo" worktree add --force --detach "$src" "$rev" >/dev/null
    fi
    (cd "$src" && CARGO_TARGET_DIR="$root/target-$name" cargo build --release --lib --features python 2>&1 | tail -n 1)
    cp -r "$src/python/interlace" "$root/$name/interlace"
    rm -rf "$root/$name/interlace/__pycache__" "$root/$name/interlace/"_core*.so
    cp "$root/target-$name/release/lib_core.so" "$root/$name/interlace/_core.abi3.so"
    if [ "$rev" != WORKTREE ]; then
        git -C "$repo" worktree remove --force "$src" # the copy above is all a round needs
    fi
}

build "$a" A
build "$b" B
for case in "$@"; do
    : >"$root/A.$case" && : >"$root/B.$case"
    for _ in $(seq "$rounds"); do
        for name in A B; do
            PYTHONPATH="$root/$name" "$python" "$repo/benches/compare_builds_fit.py" "$case" "$fits" >>"$root/$name.$case"
        done
    done
    for name in A B; do
        rev=$a && [ "$name" = B ] && rev=$b
        "$python" -c "
import statistics, sys
v = sorted(float(x) for x in open('$root/$name.$case').read().split())
print(f'$case  $rev: median {statistics.median(v):.1f} ms, lower quartile {v[len(v) // 4]:.1f}, min {v[0]:.1f} ({len(v)} fits)')"
    done
done
