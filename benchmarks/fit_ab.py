"""Paired A/B timing of ``fit_columns``: the working tree against a git revision, in one process.

This VM's speed drifts by ±30 % within seconds, so timings from separate runs cannot resolve a few per cent. Here the
package at ``--rev`` is extracted (``git archive``) into a temporary directory as ``stemquant_old`` and both versions
fit the same images alternately (order swapped every image); the ratio old/new of CPU times is taken per image pair.

    python benchmarks/fit_ab.py --rev HEAD~1 [--columns 20] [--rounds 8]

Prints, per criterion, the median CPU times, the median and interquartile range of the paired ratio (> 1: the
working tree is faster), the iterations and the largest position difference between the two versions.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from fit_speed import DOSE, P, lattice_image, noisy

from stemquant.quant import fit_columns

ROOT = Path(__file__).resolve().parents[1]


def import_old(rev: str, where: Path):
    """``stemquant.quant.fit_columns`` of git revision ``rev``, imported as package ``stemquant_old``."""
    archive = where / "old.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "src/stemquant"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    pkg = where / "stemquant_old"
    (where / "src" / "stemquant").rename(pkg)
    for f in pkg.rglob("*.py"):  # absolute imports of the package point to the old copy
        text = f.read_text()
        text = re.sub(r"\bstemquant\.", "stemquant_old.", text)
        text = re.sub(r"from stemquant import", "from stemquant_old import", text)
        f.write_text(text)
    sys.path.insert(0, str(where))
    from stemquant_old.quant import fit_columns as old

    return old


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", required=True, help="git revision to compare the working tree with")
    ap.add_argument("--columns", type=int, default=20, help="lattice side: columns² columns (default 20 -> 400)")
    ap.add_argument("--rounds", type=int, default=8, help="rounds over the 4 images (default 8)")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    img, pos, start = lattice_image(args.columns, args.columns, rng)
    images = [noisy(img, rng) for _ in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        old = import_old(args.rev, Path(tmp))
        print(f"{len(pos)} columns, {img.shape[0]}x{img.shape[1]} px; old = {args.rev}, new = working tree")
        for noise in ("gaussian", "poisson"):
            kw = dict(dose=DOSE if noise == "poisson" else None, noise=noise, crlb=False)
            cpu = {"old": [], "new": []}
            last = {}
            for r in range(args.rounds):
                for i, d in enumerate(images):
                    pair = (("old", old), ("new", fit_columns))
                    for name, fn in pair if (r + i) % 2 else pair[::-1]:
                        c = time.process_time()
                        last[name, i] = fn(d, start, P, **kw)
                        cpu[name].append(time.process_time() - c)
            ratio = np.array(cpu["old"]) / np.array(cpu["new"])
            dx = max(float(np.abs(last["old", i].positions - last["new", i].positions).max()) for i in range(4))
            iters = [int(last["new", i].n_iter) for i in range(4)], [int(last["old", i].n_iter) for i in range(4)]
            print(f"{noise:8s} CPU ms old {np.median(cpu['old']) * 1e3:.1f}, new {np.median(cpu['new']) * 1e3:.1f}; "
                  f"old/new median {np.median(ratio):.2f} (IQR {np.percentile(ratio, 25):.2f}-"
                  f"{np.percentile(ratio, 75):.2f}); iterations new {iters[0]} old {iters[1]}; "
                  f"largest position difference {dx:.1e} Å")


if __name__ == "__main__":
    main()
