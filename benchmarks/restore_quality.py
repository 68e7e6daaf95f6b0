"""Quantitative effect of restoration: column positions and SCS fitted on raw vs restored images.

A 12×12 lattice of Gaussian columns (spacing 2.0 Å, width ρ = 0.40 Å, heights η uniform in [0.10, 0.30],
background 0.02, normalised intensity, pixel size 0.1 Å — the nominal pixel size of the training data) is
distorted at 5e2, 5e3 and 5e4 e⁻/Å² (``--frames`` realisations per dose) by

* ``poisson``: Poisson noise only (no scan distortion — *not* the distribution the network was trained on),
* ``table22``: the Table 2.2 STEM preset of Friedrich (2023) = ``stemquant.distort.STEMParams()``: AR(1) scan
  jitter φ = 0.5, σ_x = 0.5 px, σ_y = 0.25 px (linear interpolation), Poisson noise, fast-scan PSF at a
  0.5 µs dwell time. The pipeline returns detector counts; they are divided by ``dose · pixel_size²`` before
  fitting (``to_intensity``). This is the matched test: the model is meant for scan-distorted images.

The truth is always the *undistorted* lattice (positions and SCS). Each frame is fitted with
``stemquant.quant.fit_columns`` (common width, fitted background, start = truth + N(0, 0.05 Å)):

* raw (Poisson ML): Poisson maximum likelihood with the dose (right for Poisson counts; after the fast-scan PSF
  the counts are no longer Poisson, so it is only approximately the ML criterion for ``table22``),
* raw (LSQ): the same raw frames fitted by least squares (same criterion as the restored images),
* restored (LSQ): ``stemquant.restore.restore(frame, model)`` then least squares.

Reported per distortion, dose and method: position MAE [Å] (mean Euclidean distance to the true position), mean
dx and dy bias [Å] (x = fast-scan axis; standard error of dx from the spread of the per-frame means), SCS MAPE
[%], mean SCS bias [%] (mean of (SCS_fit − SCS_true)/SCS_true) and the fraction of converged fits; then the
ratios restored / raw (Poisson ML) and restored / raw (LSQ) of the position MAE and SCS MAPE, same run.
Before that, noise-free reference fits: the clean lattice and the fast-scan PSF alone (the deterministic part of
each preset) at several dwell times, raw vs restored, with the first-order prediction of the fitted shift
(``fit_shift_first_order``, docs/restoration.md).

    OMP_NUM_THREADS=1 python benchmarks/restore_quality.py [--weights src/stemquant/restore/weights/hrstem.pt]
        [--frames 4] [--distortion {poisson,table22,both}] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
import torch

from stemquant.distort import STEMDistortion, STEMParams, apply_fast_scan, fast_scan_params, fast_scan_psf
from stemquant.quant import fit_columns
from stemquant.restore import restore
from stemquant.restore._evaluate import resolve_model
from stemquant.units import counts_per_pixel

P = 0.1  # pixel size [Å]
SPACING, RHO, BG = 2.0, 0.40, 0.02
N_SIDE = 12
DOSES = (5e2, 5e3, 5e4)
DISTORTIONS = ("poisson", "table22")
SCAN_DWELLS = (0.05e-6, 0.2e-6, 0.5e-6, 1e-6, 2e-6)  # [s], range of stemquant.distort.sample_stem_params
METHODS = ("raw (Poisson ML)", "raw (LSQ)", "restored (LSQ)")
# float32 FFT of the fast-scan convolution: zero-count pixels may come out at −1e-7 of the frame maximum
_FFT_ROUNDOFF = 1e-5


def lattice(rng):
    """Clean image (H, W), true positions (N, 2) [Å] and true SCS (N,) [Å²]."""
    g = SPACING * (np.arange(N_SIDE) + 1)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    eta = rng.uniform(0.10, 0.30, len(pos))
    n = int(round((N_SIDE + 1) * SPACING / P))
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * P
    img = np.full((n, n), BG)
    for (x, y), e in zip(pos, eta, strict=True):
        img += e * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * RHO**2))
    return img, pos, 2 * np.pi * eta * RHO**2


def table22_params() -> STEMParams:
    """The Table 2.2 STEM preset of Friedrich (2023): the defaults of ``STEMParams`` (jitter in px, 0.5 µs)."""
    return STEMParams()


def to_intensity(counts, dose: float, pixel_size: float) -> np.ndarray:
    """Detector counts -> normalised intensity: divide by ``dose [e⁻/Å²] · pixel_size² [Å²]``.

    Negative values that are float32-FFT round-off of the fast-scan convolution (|x| ≤ 1e-5 of the frame
    maximum) are set to 0 so that a Poisson fit accepts the frame; larger negative values raise ValueError.
    """
    x = np.asarray(counts, dtype=np.float64)
    peak = np.abs(x).max(axis=(-2, -1), keepdims=True)
    if np.any(x < -_FFT_ROUNDOFF * peak):
        raise ValueError(f"counts have negative pixels beyond FFT round-off (min {x.min():.3g}); "
                         "the distortion is not a non-negative count image")
    return np.maximum(x, 0.0) / counts_per_pixel(1.0, dose, pixel_size)


def distort_frames(clean, dose: float, kind: str, frames: int, rng) -> np.ndarray:
    """``frames`` independent distorted copies of ``clean`` in normalised intensity, shape (frames, H, W)."""
    if kind == "poisson":
        scale = counts_per_pixel(1.0, dose, P)
        return rng.poisson(clean * scale, (frames, *clean.shape)) / scale
    if kind == "table22":
        stack = np.broadcast_to(clean, (frames, *clean.shape))
        out = STEMDistortion(table22_params())(stack, dose=dose, pixel_size=P, rng=rng)
        return to_intensity(out.image, dose, P)
    raise ValueError(f"distortion must be one of {DISTORTIONS}, got {kind!r}")


def psf_only(clean, dwell_time: float, params: STEMParams | None = None) -> np.ndarray:
    """``clean`` through the fast-scan PSF of ``params`` (default Table 2.2 response times) at ``dwell_time`` [s]."""
    p = table22_params() if params is None else params
    kw = fast_scan_params(dwell_time, detector_time=p.detector_time, readout_decay=p.readout_decay,
                          readout_period=p.readout_period, readout_phase=p.readout_phase)
    return apply_fast_scan(clean, fast_scan_psf(length=clean.shape[-1], **kw))


def fit_shift_first_order(psf, sigma_px: float) -> float:
    """First-order shift [px] of a Gaussian (std ``sigma_px``) fitted to that Gaussian convolved with ``psf``.

    Linearising the fit around the truth, the lag-s copy G(x − s) projects on ∂G/∂x with weight
    s·exp(−s²/4σ²), so δx = Σ_s psf[s]·s·exp(−s²/4σ²) (docs/restoration.md). Unlike the PSF centroid
    Σ psf[s]·s, which grows like log(length) for the half-Lorentzian tail, this converges.
    """
    k = np.asarray(psf, dtype=np.float64)
    s = np.arange(k.size)
    return float(np.sum(k * s * np.exp(-(s**2) / (4 * sigma_px**2))))


def errors(fit, pos, scs, frame: int | None = None) -> dict:
    """Position MAE, mean dx, dy bias [Å], SCS MAPE, mean SCS bias [%], converged fraction.

    Over all frames and columns of ``fit``, or over frame ``frame`` only.
    """
    sel = slice(None) if frame is None else frame
    d = fit.positions[sel] - pos
    rel = (fit.scs[sel] - scs) / scs
    # columns of one frame share the scan jitter, so the standard error of the mean dx comes from the spread of
    # the per-frame means (NaN for a single frame)
    per_frame = d[..., 0].reshape(-1, d.shape[-2]).mean(-1)
    se = per_frame.std(ddof=1) / np.sqrt(per_frame.size) if per_frame.size > 1 else np.nan
    return {"pos_mae_A": np.linalg.norm(d, axis=-1).mean(), "dx_bias_A": d[..., 0].mean(), "dx_se_A": se,
            "dy_bias_A": d[..., 1].mean(), "scs_mape_pct": 100 * np.abs(rel).mean(),
            "scs_bias_pct": 100 * rel.mean(), "converged": fit.converged[sel].mean()}


def reference_table(clean, pos, scs, model) -> pd.DataFrame:
    """Noise-free fits, raw and restored: clean lattice and fast-scan PSF alone at ``SCAN_DWELLS``."""
    labels = ["clean"] + [f"PSF only, {t * 1e6:g} µs" for t in SCAN_DWELLS]
    imgs = np.stack([clean] + [psf_only(clean, t) for t in SCAN_DWELLS])
    restored = restore(imgs, model, device="cpu")  # a stack: each frame normalised on its own
    raw = fit_columns(imgs, pos, P, crlb=False, progress=False)
    res = fit_columns(restored, pos, P, crlb=False, progress=False)
    rows = []
    for k, lab in enumerate(labels):
        pred = 0.0 if k == 0 else fit_shift_first_order(
            fast_scan_psf(length=clean.shape[-1], **fast_scan_params(SCAN_DWELLS[k - 1])), RHO / P) * P
        e_raw = errors(raw, pos, scs, frame=k)
        e_res = errors(res, pos, scs, frame=k)
        rows.append({"image": lab, "predicted_dx_A": pred, "raw_dx_A": e_raw["dx_bias_A"],
                     "raw_scs_bias_pct": e_raw["scs_bias_pct"], "restored_dx_A": e_res["dx_bias_A"],
                     "restored_dy_A": e_res["dy_bias_A"], "restored_scs_bias_pct": e_res["scs_bias_pct"],
                     "net_dx_A": e_res["dx_bias_A"] - e_raw["dx_bias_A"]})
    return pd.DataFrame(rows)


def run_distortion(kind, clean, pos, scs, model, frames, rng) -> pd.DataFrame:
    """Rows (distortion, dose, method, metrics...) for one distortion at all ``DOSES``."""
    rows = []
    for dose in DOSES:
        noisy = distort_frames(clean, dose, kind, frames, rng)
        start = pos + rng.normal(0, 0.05, (frames, *pos.shape))
        t0 = time.perf_counter()
        restored = restore(noisy, model, device="cpu")  # a stack: each frame normalised on its own
        t_restore = time.perf_counter() - t0
        fits = (fit_columns(noisy, start, P, dose=dose, noise="poisson", crlb=False, progress=False),
                fit_columns(noisy, start, P, noise="gaussian", crlb=False, progress=False),
                fit_columns(restored, start, P, noise="gaussian", crlb=False, progress=False))
        for method, fit in zip(METHODS, fits, strict=True):
            rows.append({"distortion": kind, "dose": dose, "method": method, **errors(fit, pos, scs)})
        # progress on stderr, so that stdout is the pasteable report
        print(f"# {kind}, dose {dose:.0e}: restored {frames} frames in {t_restore:.2f} s", file=sys.stderr,
              flush=True)
    return pd.DataFrame(rows)


def ratio_table(df: pd.DataFrame) -> pd.DataFrame:
    """Restored / raw ratios of position MAE and SCS MAPE per distortion and dose (< 1: restoration helps)."""
    rows = []
    for (kind, dose), g in df.groupby(["distortion", "dose"], sort=False):
        m = g.set_index("method")
        res, ml, lsq = m.loc[METHODS[2]], m.loc[METHODS[0]], m.loc[METHODS[1]]
        rows.append({"distortion": kind, "dose": dose,
                     "pos_mae_vs_ml": res.pos_mae_A / ml.pos_mae_A,
                     "scs_mape_vs_ml": res.scs_mape_pct / ml.scs_mape_pct,
                     "pos_mae_vs_lsq": res.pos_mae_A / lsq.pos_mae_A,
                     "scs_mape_vs_lsq": res.scs_mape_pct / lsq.scs_mape_pct})
    return pd.DataFrame(rows)


def _fmt(v) -> str:
    """4 significant digits for floats, the value otherwise."""
    if isinstance(v, float | np.floating):
        return f"{v:.0e}".replace("e+0", "e") if v >= 100 and float(v).is_integer() else f"{v:.4g}"
    return str(v)


def to_markdown(df: pd.DataFrame, headers: dict) -> str:
    """GitHub markdown table of ``df`` with column titles from ``headers``."""
    cols = list(headers)
    lines = ["| " + " | ".join(headers[c] for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


REF_HEADERS = {"image": "noise-free image", "predicted_dx_A": "first-order dx [Å]", "raw_dx_A": "raw fit dx [Å]",
               "raw_scs_bias_pct": "raw SCS bias [%]", "restored_dx_A": "restored dx [Å]",
               "restored_dy_A": "restored dy [Å]", "restored_scs_bias_pct": "restored SCS bias [%]",
               "net_dx_A": "restored − raw dx [Å]"}
MAIN_HEADERS = {"distortion": "distortion", "dose": "dose [e⁻/Å²]", "method": "method",
                "pos_mae_A": "position MAE [Å]", "dx_bias_A": "mean dx [Å]", "dx_se_A": "dx SE [Å]",
                "dy_bias_A": "mean dy [Å]",
                "scs_mape_pct": "SCS MAPE [%]", "scs_bias_pct": "mean SCS bias [%]", "converged": "converged"}
RATIO_HEADERS = {"distortion": "distortion", "dose": "dose [e⁻/Å²]", "pos_mae_vs_ml": "pos MAE restored/raw ML",
                 "scs_mape_vs_ml": "SCS MAPE restored/raw ML", "pos_mae_vs_lsq": "pos MAE restored/raw LSQ",
                 "scs_mape_vs_lsq": "SCS MAPE restored/raw LSQ"}


def _show(df: pd.DataFrame, headers: dict, markdown: bool) -> None:
    """Print a table as markdown or plain text."""
    if markdown:
        print(to_markdown(df, headers))
    else:
        print(df[list(headers)].to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="src/stemquant/restore/weights/hrstem.pt")
    ap.add_argument("--frames", type=int, default=4, help="noise realisations per dose")
    ap.add_argument("--distortion", choices=(*DISTORTIONS, "both"), default="both")
    ap.add_argument("--markdown", action="store_true", help="print the tables as GitHub markdown")
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error(f"--frames must be >= 1, got {args.frames}")
    torch.set_num_threads(1)
    clean, pos, scs = lattice(np.random.default_rng(args.seed))
    model = resolve_model(args.weights, device="cpu")
    kinds = DISTORTIONS if args.distortion == "both" else (args.distortion,)
    print(f"# lattice {N_SIDE}x{N_SIDE} columns, rho {RHO} Å, image {clean.shape}, pixel {P} Å, "
          f"{args.frames} frames/dose, seed {args.seed}, model {args.weights}")
    print("\nNoise-free reference fits (truth = undistorted lattice; x = fast-scan axis):")
    _show(reference_table(clean, pos, scs, model), REF_HEADERS, args.markdown)
    # one independent stream per distortion, so --distortion poisson reproduces the poisson half of "both"
    df = pd.concat([run_distortion(k, clean, pos, scs, model, args.frames,
                                   np.random.default_rng([args.seed, DISTORTIONS.index(k)])) for k in kinds])
    print("\nFits of distorted frames:")
    _show(df, MAIN_HEADERS, args.markdown)
    print("\nRatios restored / raw, same run (< 1 means restoration helps):")
    _show(ratio_table(df), RATIO_HEADERS, args.markdown)


if __name__ == "__main__":
    main()
