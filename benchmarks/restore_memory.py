"""Peak host memory of ``stemquant.restore.restore`` for large images, in units of the image's own size.

Run:  python benchmarks/restore_memory.py [--sizes 2048 4096] [--tile 512]

Each measurement runs in a fresh process (``ru_maxrss`` only grows): the process creates a float64 image of
N×N pixels, records its peak RSS, restores the image with an identity network (so only restore's own buffers
count, not a network's activations, which are bounded by ``tile`` and ``batch_size``), and prints the peak
RSS rise divided by the image's size in bytes. Baseline in the same process: ``image.copy()`` (ratio 1.0).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

_CHILD = r"""
import resource, sys
import numpy as np, torch
from stemquant.restore import restore

class Identity(torch.nn.Module):
    size_multiple = 8
    def forward(self, x):
        return x

n, tile, what = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
img = np.random.default_rng(0).normal(100.0, 5.0, size=(n, n))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = img.copy() if what == "copy" else restore(img, Identity(), tile=tile, overlap=32, device="cpu")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) * 1024 / img.nbytes)
"""


def peak_ratio(n: int, tile: int, what: str) -> float:
    """Peak RSS rise / image bytes of one fresh process."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(tile), what], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--tile", type=int, default=512)
    args = ap.parse_args()
    print("| image | float64 size | copy baseline | restore peak (× image) | restore / copy |")
    print("|---|---|---|---|---|")
    for n in args.sizes:
        base, ours = peak_ratio(n, args.tile, "copy"), peak_ratio(n, args.tile, "restore")
        print(f"| {n}² | {n * n * 8 / 2**20:.0f} MiB | {base:.2f} | {ours:.2f} | {ours / base:.2f} |")


if __name__ == "__main__":
    main()
