"""Build a Pt [001] SCS-vs-thickness library with abTEM (frozen-phonon multislice), with checkpoints.

Each frozen-phonon configuration is one multislice run through ``--max-cells`` unit cells that records
every unit-cell exit plane (abTEM ``exit_planes``), so a whole thickness series costs one run. After each
configuration its rows are appended to ``<out>.raw.csv`` (config, seed, n_atoms, scs) and the library
``<out>`` (mean and standard error over the finished configurations, provenance header) is rewritten;
``--resume`` skips finished configurations. Single-threaded by design (OMP/MKL/FFTW one thread, dask
single-threaded scheduler).

Example (the bundled libraries)::

    OMP_NUM_THREADS=1 nohup python validation/make_scs_library.py --preset particle --max-cells 14 \
        --configs 16 --scan-gpts 7 --out src/stemquant/data/pt001_particle.csv --resume > particle.log 2>&1 &
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def _write_library(raw: pd.DataFrame, out: Path, provenance: list[str]) -> None:
    """Average the finished configurations and write the library CSV with a '#' provenance header."""
    g = raw.groupby("n_atoms")["scs"]
    n_cfg = raw["config"].nunique()
    lib = pd.DataFrame({"n_atoms": g.mean().index.astype(int), "scs": g.mean().to_numpy(),
                        "scs_sem": (g.std(ddof=1) / np.sqrt(g.count())).fillna(0.0).to_numpy(),
                        "n_configs": g.count().to_numpy()})
    zero = pd.DataFrame({"n_atoms": [0], "scs": [0.0], "scs_sem": [0.0], "n_configs": [n_cfg]})
    lib = pd.concat([zero, lib])
    tmp = out.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for line in provenance + [f"finished frozen-phonon configurations: {n_cfg}"]:
            fh.write(f"# {line}\n")
        lib.to_csv(fh, index=False, float_format="%.7g")
    tmp.replace(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["bulk", "dislocation", "particle"], required=True)
    p.add_argument("--max-cells", type=int, default=20)
    p.add_argument("--configs", type=int, default=4, help="frozen-phonon configurations")
    p.add_argument("--seed", type=int, default=1000, help="seed of config 0; config c uses seed + c")
    p.add_argument("--scan-gpts", type=int, default=6)
    p.add_argument("--lateral-cells", type=int, default=5)
    p.add_argument("--sampling", type=float, default=0.0295)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    import abtem
    import dask

    from stemquant.simulate import PRESETS
    from stemquant.simulate._abtem import PT_PHONON_SIGMA, abtem_scs_series

    dask.config.set(scheduler="single-threaded")
    abtem.config.set({"fftw.threads": 1, "mkl.threads": 1, "diagnostics.progress_bar": False})
    params = PRESETS[args.preset]
    raw_path = args.out.with_name(args.out.stem + ".raw.csv")
    if raw_path.exists() and args.resume:
        raw = pd.read_csv(raw_path)
    else:
        raw = pd.DataFrame(columns=["config", "seed", "n_atoms", "scs"])
        raw.to_csv(raw_path, index=False)
    done = set(raw["config"].astype(int)) if len(raw) else set()
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    provenance = [
        f"stemquant SCS library: Pt fcc [001], a = 3.92 Å, preset '{args.preset}' of Friedrich (2023) "
        "Table 2.1",
        f"probe: E = {params.energy:g} eV, semiangle_cutoff = {params.semiangle_cutoff} mrad, "
        f"C10 = {params.C10} Å "
        f"(abTEM defocus = {params.defocus} Å), Cs = {params.Cs:g} Å, C50 = {params.C50:g} Å; "
        f"HAADF {params.inner}-{params.outer} mrad; source size irrelevant for integrated SCS",
        f"abTEM {abtem.__version__}: infinite projection, lobato parametrization, "
        f"sampling {args.sampling} Å, slice thickness a/2, exit plane every unit cell, "
        f"supercell {args.lateral_cells}x{args.lateral_cells} cells, float32",
        f"frozen phonons: sigma = {PT_PHONON_SIGMA} Å per direction (B = 0.31 Å^2), planned configs "
        f"{args.configs}, seeds {args.seed}+c",
        f"scan: {args.scan_gpts}x{args.scan_gpts} grid (no endpoint) over the a/2 x a/2 cell of one column; "
        "scs = mean detected fraction * (a/2)^2 [Å^2]",
        "columns: n_atoms, scs [Å^2] (mean over configs), scs_sem [Å^2] (standard error), n_configs",
        f"command: {cmd}",
    ]
    for c in range(args.configs):
        if c in done:
            continue
        t0 = time.time()
        n, scs = abtem_scs_series(params, max_cells=args.max_cells, seed=args.seed + c,
                                  lateral_cells=args.lateral_cells, sampling=args.sampling,
                                  scan_gpts=args.scan_gpts, device=args.device)
        rows = pd.DataFrame({"config": c, "seed": args.seed + c, "n_atoms": n, "scs": scs})
        rows.to_csv(raw_path, mode="a", header=False, index=False, float_format="%.8g")
        raw = pd.read_csv(raw_path)
        _write_library(raw, args.out, provenance)
        print(f"config {c} done in {time.time() - t0:.0f} s; scs[max] = {scs[-1]:.4g} Å^2", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
