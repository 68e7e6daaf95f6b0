"""Seconds to restore a 1024×1024 image on the CPU: published-size CGRDN vs the lite configuration.

Random weights (timing only). Both run in this process through ``stemquant.restore.restore`` with the default
tiling (tile=1024, overlap=64: one tile) and the models from ``build_model`` (channels-last); the lite model
is also timed with 512-pixel tiles (3×3 tiles of 386², what a larger image costs per pixel). The ratio is
published / lite; a lite run in contiguous (NCHW) memory format shows what channels-last buys.

    python benchmarks/restore_speed.py [--size 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from stemquant.restore import build_model, restore


def _time(fn, image: np.ndarray, repeats: int) -> float:
    """Best wall time [s] of ``repeats`` calls ``fn(image)`` after a warm-up call on a 256² crop."""
    fn(image[:256, :256])
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(image)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side [pixels]")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats for the lite model")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    image = rng.poisson(50.0, size=(args.size, args.size)).astype(np.float64)
    torch.manual_seed(0)
    lite = build_model("hrstem-lite", device="cpu")
    lite_nchw = build_model("hrstem-lite", device="cpu").to(memory_format=torch.contiguous_format)
    lite_nchw.load_state_dict(lite.state_dict())
    published = build_model("hrstem", device="cpu")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, image {args.size}x{args.size}")
    t_lite = _time(lambda im: restore(im, lite, device="cpu"), image, args.repeats)
    print(f"CGRDN lite      (181,377 params, channels-last): {t_lite:8.2f} s")
    t_tiled = _time(lambda im: restore(im, lite, device="cpu", tile=512, batch_size=4), image, args.repeats)
    print(f"CGRDN lite      (tile=512, batch_size=4)       : {t_tiled:8.2f} s")
    t_nchw = _time(lambda im: restore(im, lite_nchw, device="cpu"), image, 1)
    print(f"CGRDN lite      (contiguous NCHW)              : {t_nchw:8.2f} s")
    t_pub = _time(lambda im: restore(im, published, device="cpu"), image, 1)
    print(f"CGRDN published (7,035,521 params)             : {t_pub:8.2f} s")
    print(f"ratio published / lite = {t_pub / t_lite:.1f}x; "
          f"NCHW / channels-last (lite) = {t_nchw / t_lite:.2f}x")


if __name__ == "__main__":
    main()
