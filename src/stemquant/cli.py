"""``stemquant <verb>``: command-line entry point.

Verbs: ``demo`` (simulate → noise → find → fit → count, end to end), ``fit``, ``count``, ``restore``.
The CLI composes the subpackages; each handler imports what it needs lazily so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not np.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def _width(text: str):
    if text in ("common", "individual"):
        return text
    try:
        return _positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be common, individual or a positive width [Å], got {text!r}") from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _gmm_notes(res, *, forced: bool = False, anchored: bool = False) -> list[str]:
    """What a user must know before trusting GMM counts: the absolute scale is assumed (unless ``anchored`` by
    the user), one component selected by ICL (not ``forced``) counts nothing."""
    notes = [] if anchored else [
        f"the lowest component is taken as {_plural(res.first_count, 'atom')} (--first-count): a GMM finds "
        "thickness steps, not absolute counts; anchor it with --first-count or count with --library"]
    if res.n_components == 1 and len(res.icl) > 1 and not forced:
        notes.append("ICL selected a single component: the SCS do not resolve separate thicknesses at this noise "
                     "level (or the sample has one thickness); every column gets the same count. A library, or a "
                     "higher dose, is needed to count these columns")
    return notes


def _out_path(path: str | None, default: Path) -> Path:
    return Path(path) if path else default


# --------------------------------------------------------------------------------------------- fit
def _cmd_fit(args) -> int:
    from stemquant.io import check_outputs, load_image, write_csv_atomic
    from stemquant.quant import find_columns, fit_columns, load_positions

    out = _out_path(args.out, Path(args.image).with_suffix(".columns.csv"))
    meta = out.with_name(out.name + ".json")  # columns.csv -> columns.csv.json: never a file the user named
    check_outputs(out, meta, args.plot, overwrite=args.overwrite, inputs=(args.image, args.positions))
    image, file_p = load_image(args.image)
    pixel_size = args.pixel_size or file_p
    if pixel_size is None:
        raise ValueError(f"{args.image} has no pixel size in its metadata; pass --pixel-size [Å]")
    if args.pixel_size and file_p and not np.isclose(args.pixel_size, file_p, rtol=1e-3):
        print(f"note: --pixel-size {args.pixel_size:g} Å overrides the {file_p:g} Å in {args.image}", file=sys.stderr)
    print(f"image {' x '.join(map(str, image.shape))} px, pixel size {pixel_size:g} Å "
          f"({'--pixel-size' if args.pixel_size else 'from the file'})")
    types = None  # found columns are of one type
    if args.positions:
        positions, types = load_positions(args.positions, with_types=True)
    else:
        positions = find_columns(image if image.ndim == 2 else image.mean(0), pixel_size,
                                 min_distance=args.min_distance, threshold=args.threshold, method=args.method)
        print(f"found {_plural(len(positions), 'column')}")
        if len(positions) == 0:
            raise ValueError(f"no columns found (--method {args.method}, --threshold {args.threshold:g}, "
                             f"--min-distance {args.min_distance:g} Å): lower --threshold, or give --positions")
    fit = fit_columns(image, positions, pixel_size, dose=args.dose, width=args.width, noise=args.noise, types=types,
                      device=args.device, workers=args.workers, progress=True if image.ndim == 3 else None)
    write_csv_atomic(fit.table, out, overwrite=args.overwrite)
    _write_fit_metadata(meta, args, fit, pixel_size_source="--pixel-size" if args.pixel_size else "file")
    conv = fit.table["converged"].mean()
    print(f"fitted {_plural(len(fit.table), 'column')} ({100 * conv:.1f}% converged) -> {out} "
          f"(settings and units: {meta})")
    if fit.noise == "gaussian" and args.dose is None:
        print("note: least squares (no --dose): the *_crlb columns are bounds for Gaussian noise of one variance, "
              "estimated from the residuals; with shot noise (brighter pixels noisier) they understate the SCS "
              "scatter — give --dose for a normalised image, or --noise poisson for a counts image", file=sys.stderr)
    if conv < 0.5:
        if len(positions) > 1:
            from scipy.spatial import cKDTree

            nn = cKDTree(positions).query(positions, k=2)[0][:, 1]
            apart = f": columns a median {np.median(nn) / pixel_size:.1f} px apart"
        else:
            apart = ""
        print(f"warning: only {100 * conv:.0f}% of the columns converged. Check --pixel-size ({pixel_size:g} Å"
              f"{apart}), --dose and the starting positions", file=sys.stderr)
    if args.plot:
        from stemquant.quant import plot_fit, save_figure

        fig = plot_fit(image if image.ndim == 2 else image[0], fit.table[fit.table["frame"] == 0], pixel_size,
                       unit="Å²" if fit.dose is not None else "image units × Å²",
                       title=None if image.ndim == 2 else f"frame 0 of {len(image)}")
        save_figure(fig, args.plot, overwrite=args.overwrite)
        print(f"plot -> {args.plot}")
    return 0


def _write_fit_metadata(path: Path, args, fit, *, pixel_size_source: str) -> None:
    """The settings and units of a fit CSV, as JSON next to it: the CSV alone does not say what its numbers mean."""
    import json

    from stemquant import __version__
    from stemquant.io import atomic_write

    intensity = "fraction of the incident beam" if fit.dose is not None else "image units (counts)"
    scs_unit = "Å² (fraction of the beam × Å²)" if fit.dose is not None else "image units × Å²"
    meta = {
        "stemquant": __version__,
        "command": "stemquant " + shlex.join(getattr(args, "argv", None) or ["fit", str(args.image)]),
        "image": str(args.image),
        "positions": str(args.positions) if args.positions else "found (stemquant find_columns)",
        "pixel_size_A": fit.pixel_size,
        "pixel_size_source": pixel_size_source,
        "dose_e_per_A2": fit.dose,
        "noise": fit.noise,
        "width": fit.width_mode,
        "types": sorted({int(v) for v in fit.table["type"]}),
        "frames": int(np.size(fit.n_iter)),
        "iterations": np.atleast_1d(fit.n_iter).tolist(),
        "units": {  # per CSV column; the *_crlb columns are standard deviations (square roots of the bounds)
            "x": "Å from the image's left edge", "y": "Å from the image's top edge", "width": "Å",
            "height": intensity, "background": intensity, "scs": scs_unit,
            "x_crlb": "Å", "y_crlb": "Å", "scs_crlb": scs_unit,
            "empty_site": "bool: no significant column at the start position, removed (height and SCS 0)",
            "runaway": "bool: individual width ran away (a broad feature under the start); fitted at the start "
                       "position and width, not converged",
            "width_fixed": "bool: individual width fixed at its start value (runaways; columns that shrank and faded "
                           "twice); the SCS assumes that width",
        },
    }
    with atomic_write(path, overwrite=args.overwrite) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- count
def _cmd_count(args) -> int:
    import pandas as pd

    from stemquant.io import check_outputs, write_csv_atomic
    from stemquant.quant import count_gmm, count_library, load_library_csv

    out = _out_path(args.out, Path(args.csv).with_suffix(".counts.csv"))
    check_outputs(out, args.plot, overwrite=args.overwrite, inputs=(args.csv, args.library))
    if args.method is None:  # --library alone means library counting (it used to be ignored by the GMM)
        args.method = "library" if args.library else "gmm"
    elif args.method == "gmm" and args.library:
        raise ValueError("--library is for --method library; the GMM does not use it (drop one of them)")
    if args.method == "library" and args.dose is not None:
        raise ValueError("--dose sets the GMM's dose-dependent variance; library counting does not use it")
    if args.method == "library" and not args.library:
        raise ValueError("--method library needs --library (a bundled name such as pt001_particle, or a CSV with "
                         "columns n_atoms, scs)")
    try:
        table = pd.read_csv(args.csv)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {args.csv}: {exc}") from exc
    if "scs" not in table.columns:
        raise ValueError(f"{args.csv} has no 'scs' column (write it with `stemquant fit`)")
    if "converged" in table.columns and not args.include_unconverged:
        bad = ~table["converged"].astype(bool)
        if bad.any():
            n_empty = int(table.loc[bad, "empty_site"].astype(bool).sum()) if "empty_site" in table.columns else 0
            empty = (f", {n_empty} of them empty sites (SCS 0: --include-unconverged would count them as the "
                     "lowest component unless it stands for 0 atoms)") if n_empty else ""
            print(f"leaving out {int(bad.sum())} columns whose fit did not converge{empty} "
                  "(--include-unconverged keeps them)")
            table = table[~bad].reset_index(drop=True)
            if table.empty:
                raise ValueError(f"no column of {args.csv} converged: nothing to count (--include-unconverged "
                                 "counts them anyway; their SCS are not estimates)")
    scs = table["scs"].to_numpy(dtype=float)
    if args.method == "gmm":
        res = count_gmm(scs, max_components=args.max_components, n_components=args.n_components, dose=args.dose,
                        first_count=1 if args.first_count is None else args.first_count)
        table["count"] = res.counts
        how = "given (--n-components)" if args.n_components else f"selected by ICL (orders 1..{len(res.icl)})"
        print(f"GMM: {_plural(res.n_components, 'component')} {how}; means {np.array2string(res.means, precision=4)}")
        for note in _gmm_notes(res, forced=args.n_components is not None, anchored=args.first_count is not None):
            print(f"note: {note}", file=sys.stderr)
    else:
        if Path(args.library).exists():
            lib = load_library_csv(args.library)
        else:  # a bundled library of stemquant.simulate
            from stemquant.simulate import load_scs_library

            try:
                bundled = load_scs_library(args.library)
            except ValueError as exc:
                raise ValueError(f"--library: {exc}") from exc
            lib = bundled.counting_table()
        table["count"] = count_library(scs, lib)
        res = None
        print(f"library: counts from {len(lib)} library entries")
    write_csv_atomic(table, out, overwrite=args.overwrite)
    print(f"counts of {_plural(len(table), 'column')}, {_plural(int(table['count'].sum()), 'atom')} in total -> {out}")
    if args.plot:
        from stemquant.quant import plot_counting, plot_library_counting, save_figure

        unit = _scs_unit(args.csv) if res is not None or Path(args.library).exists() else "Å²"  # bundled: Å²
        fig = (plot_counting(res, scs, scs_unit=unit) if res is not None
               else plot_library_counting(scs, lib, scs_unit=unit))
        save_figure(fig, args.plot, overwrite=args.overwrite)
        print(f"plot -> {args.plot}")
    return 0


def _scs_unit(csv) -> str | None:
    """The SCS unit recorded next to a fit CSV by `stemquant fit` (None without its JSON)."""
    import json

    try:  # "Å² (fraction of the beam × Å²)" -> "Å²"
        return json.loads(Path(str(csv) + ".json").read_text(encoding="utf-8"))["units"]["scs"].split(" (")[0]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------- demo
def run_demo(out_dir="stemquant_demo", *, dose: float = 5e4, rng=0, pixel_size: float = 0.12,
             device: str = "cpu", overwrite: bool = False) -> dict:
    """End-to-end example on an embedded default: the 333-column Pt nanoparticle of the validation study.

    structures (ase particle, projected columns) -> simulate (fast incoherent HAADF model with the bundled
    abTEM SCS library, Table 2.1 'particle' probe) -> distort (Poisson shot noise at ``dose`` [e⁻/Å²]) ->
    quant (find columns, joint Poisson-ML fit, SCS, CRLB, atom counting by GMM/ICL and by library) -> metrics
    against the truth. Writes ``columns.csv`` and ``demo.png`` in ``out_dir`` and returns a summary dict.
    """
    from stemquant._validate import as_rng
    from stemquant.distort import poisson_noise
    from stemquant.io import check_outputs, write_csv_atomic
    from stemquant.quant import (
        count_gmm,
        count_library,
        detection_metrics,
        find_columns,
        fit_columns,
        metrics,
        plot_counting,
        plot_fit,
        save_figure,
    )
    from stemquant.simulate import PRESETS, load_scs_library, render_incoherent
    from stemquant.structures import project_columns, pt_nanoparticle

    rng = as_rng(rng)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; the demo writes a folder (columns.csv, demo.png)")
    out.mkdir(parents=True, exist_ok=True)
    check_outputs(out / "columns.csv", out / "demo.png", overwrite=overwrite)  # before the work, not after
    atoms = pt_nanoparticle()
    truth = project_columns(atoms)
    side = float(atoms.cell[0, 0])
    n = int(round(side / pixel_size))
    library = load_scs_library("pt001_particle")
    background = 1e-3  # fraction of the beam; a weak amorphous-support-like floor keeps λ > 0 everywhere
    clean = render_incoherent(truth, shape=(n, n), pixel_size=pixel_size, probe=PRESETS["particle"],
                              library=library, background=background, device=device)
    noisy = poisson_noise(clean, dose=dose, pixel_size=pixel_size, rng=rng) / (dose * pixel_size**2)
    # single-atom surface columns peak at ~8% of the thickest ones: a low threshold keeps them. StatSTEM's second
    # routine (Anscombe + filtering + centroid) finds all 333 at 5e3-5e5 e⁻/Å²; the plain smoothed maxima lose the
    # 8 single-atom rim columns to their 1.96 Å neighbours (peak pulled > 0.5 Å off by the smoothing).
    found = find_columns(noisy, pixel_size, min_distance=0.8, threshold=0.03, smoothing=0.3, method="anscombe")
    fit = fit_columns(noisy, found, pixel_size, dose=dose, noise="poisson", width="common", device=device)
    table = fit.table.drop(columns=["frame"])
    lib_scs = library.counting_table(int(truth["n_atoms"].max()) + 5)  # SCS of 1, 2, ... atoms
    table["count_library"] = count_library(fit.scs, lib_scs)
    # GMM + ICL as StatSTEM, on the converged columns: the empty sites (spurious starts the fit removed, SCS 0)
    # would form a spike at 0 taken for the lowest thickness. The lowest component is anchored to the library count
    # nearest to its mean; the other columns get no GMM count (-1), as with `stemquant count`.
    kept = fit.converged
    gmm = count_gmm(fit.scs[kept], max_components=16)
    first = int(np.argmin(np.abs(lib_scs - gmm.means[0]))) + 1  # nearest library entry, >= 1 atom
    gmm = count_gmm(fit.scs[kept], max_components=16, first_count=first)
    table["count_gmm"] = -1
    table.loc[kept, "count_gmm"] = gmm.counts
    true_xy = truth[["x", "y"]].to_numpy()
    nonempty = ~fit.table["empty_site"].to_numpy(bool)  # the fit's verdict on the found columns
    fi, ti = metrics.match_columns(fit.positions, true_xy, threshold=0.5)
    table["true_count"] = -1
    table.loc[fi, "true_count"] = truth["n_atoms"].to_numpy()[ti]
    det_found = detection_metrics(fit.positions, true_xy, 0.5)
    det = detection_metrics(fit.positions[nonempty], true_xy, 0.5)
    m = (table["true_count"] >= 0) & kept
    summary = {
        "columns (true / found / fitted+converged)": f"{len(truth)} / {len(found)} / {int(kept.sum())}",
        "detection F1, found columns": round(det_found["f1"], 4),
        "detection F1, after the fit removed empty sites": round(det["f1"], 4),
        "position MAE [Å]": round(metrics.mae_positions(fit.positions[fi], true_xy[ti]), 4),
        "GMM components (ICL)": gmm.n_components,
        "correct counts of converged columns, GMM": round(
            metrics.fraction_correct_counts(table["count_gmm"][m], table["true_count"][m]), 3),
        "correct counts of converged columns, library": round(
            metrics.fraction_correct_counts(table["count_library"][m], table["true_count"][m]), 3),
        "median SCS CRLB [Å²]": float(np.nanmedian(fit.table["scs_crlb"])),
    }
    csv = write_csv_atomic(table, out / "columns.csv", overwrite=overwrite)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[1.2, 1, 1])
    plot_fit(noisy, table, pixel_size, color_by="count_gmm", ax=axes[0], unit="atoms")
    axes[0].set_title(f"Pt particle, {dose:g} e⁻/Å², colour = atoms (GMM)")
    plot_counting(gmm, ax=axes[1:], scs_unit="Å²")
    png = save_figure(fig, out / "demo.png", overwrite=overwrite)
    summary["outputs"] = f"{csv}, {png}"
    if gmm.n_components == 1:
        summary["note"] = _gmm_notes(gmm, anchored=True)[0]  # anchored by the library
    return summary


def _cmd_demo(args) -> int:
    summary = run_demo(out_dir=args.out, dose=args.dose, rng=args.seed, device=args.device,
                       overwrite=args.overwrite)
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


# --------------------------------------------------------------------------------------------- restore
def _cmd_restore(args) -> int:
    from stemquant.io import check_image_suffix, check_outputs, load_image, save_image
    from stemquant.restore import restore

    check_outputs(args.output, overwrite=args.overwrite, inputs=(args.input,))
    check_image_suffix(args.output)  # before the network runs
    image, p = load_image(args.input)
    out = restore(image, model=args.model, device=args.device, tile=args.tile, overlap=args.overlap,
                  batch_size=args.batch_size)
    path = save_image(args.output, out, pixel_size=p, overwrite=args.overwrite)
    print(f"restored {args.input} with model {args.model!r} -> {path}")
    return 0


def _cmd_train(args) -> int:
    from stemquant.restore._train import train_main

    return train_main(args.args)


def _cmd_evaluate(args) -> int:
    from stemquant.restore._evaluate import evaluate_main

    return evaluate_main(args.args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="stemquant",
        description="Quantitative atomic-resolution STEM: restore, fit columns, SCS, CRLB, atom counting.",
    )
    from stemquant import __version__

    ap.add_argument("--version", action="version", version=f"stemquant {__version__}")
    sub = ap.add_subparsers(dest="verb", required=True, metavar="VERB")

    d = sub.add_parser("demo", help="end-to-end example: simulated Pt nanoparticle -> noise -> fit -> count",
                       description="Simulate the 333-column Pt nanoparticle (fast incoherent model, abTEM SCS "
                                   "library), add Poisson noise, find and fit all columns, count atoms with a "
                                   "GMM, compare with the truth; writes a CSV and a PNG.")
    d.add_argument("--out", default="stemquant_demo", help="output folder (default: ./stemquant_demo)")
    d.add_argument("--dose", type=_positive_float, default=5e4, help="electron dose [e⁻/Å²] (default 5e4)")
    d.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    d.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    d.add_argument("--overwrite", action="store_true", help="replace existing output files")
    d.set_defaults(func=_cmd_demo)

    f = sub.add_parser("fit", help="fit Gaussian columns to an image (positions from CSV or found)",
                       description="Joint fit of a constant background and one Gaussian per column; writes a "
                                   "CSV with x, y [Å], width [Å], height, SCS, CRLBs and convergence per column.")
    f.add_argument("image", help="image file (.npy, .tif, .h5; .dm3/.dm4/.emd/.ser with stemquant[io])")
    f.add_argument("--pixel-size", type=_positive_float, help="pixel size [Å] (default: from the file)")
    f.add_argument("--dose", type=_positive_float,
                   help="dose [e⁻/Å²] of a normalised image (fraction of the beam); omit for a counts image (a dose "
                        "with counts is refused)")
    g = f.add_mutually_exclusive_group()
    g.add_argument("--positions", help="CSV with x, y [Å] starting positions, and optionally 'type' (integer "
                   "column type: with --width common, one width per type)")
    g.add_argument("--find", action="store_true", help="find columns automatically (default)")
    f.add_argument("--method", default="maxima", choices=["maxima", "anscombe"],
                   help="peak finder: smoothed local maxima, or StatSTEM's Anscombe + filtering route for counts "
                        "(default maxima)")
    f.add_argument("--min-distance", type=_positive_float, default=1.0,
                   help="smallest distance between found columns [Å] (default 1.0; lower it if close, faint "
                        "columns are missed)")
    f.add_argument("--threshold", type=float, default=0.1,
                   help="peak finder threshold, relative to the brightest peak (default 0.1)")
    f.add_argument("--width", type=_width, default="common",
                   help="common (one width per type, default), individual, or a fixed width [Å]")
    f.add_argument("--noise", default="auto", choices=["auto", "gaussian", "poisson"],
                   help="fitting criterion: least squares (gaussian) or Poisson ML; auto (default) = poisson when "
                        "--dose is given (efficient at low dose), gaussian otherwise")
    f.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    f.add_argument("--workers", type=int, default=None,
                   help="CPU threads fitting the frames of a stack concurrently (default: one per core)")
    f.add_argument("--out", help="output CSV (default: the image's name with .columns.csv)")
    f.add_argument("--plot", help="PNG with the image and fitted columns")
    f.add_argument("--overwrite", action="store_true", help="replace existing output files")
    f.set_defaults(func=_cmd_fit)

    c = sub.add_parser("count", help="count atoms from fitted SCS (GMM + ICL, or library)",
                       description="Atom counting from the 'scs' column of a fit CSV.")
    c.add_argument("csv", help="CSV with an 'scs' column (from `stemquant fit`)")
    c.add_argument("--method", choices=["gmm", "library"],
                   help="GMM + ICL (default) or nearest library SCS (default when --library is given)")
    c.add_argument("--library", help="SCS library for --method library: a bundled name (pt001_bulk, "
                   "pt001_particle; SCS in Å² of normalised images) or a CSV with columns n_atoms, scs")
    c.add_argument("--max-components", type=int, default=10,
                   help="highest GMM order (default 10; a warning says when ICL is lowest at it: raise it)")
    c.add_argument("--n-components", type=int, help="force this GMM order instead of the ICL minimum")
    c.add_argument("--first-count", type=int, default=None,
                   help="atoms in the lowest GMM component (default 1; the GMM alone cannot tell)")
    c.add_argument("--dose", type=_positive_float,
                   help="dose [e⁻/Å²] for the GMM's dose-dependent component variance σ² + μ/dose")
    c.add_argument("--include-unconverged", action="store_true",
                   help="also count columns whose fit did not converge (left out by default)")
    c.add_argument("--out", help="output CSV (default: the CSV's name with .counts.csv)")
    c.add_argument("--plot", help="PNG: SCS histogram with the mixture and the ICL curve")
    c.add_argument("--overwrite", action="store_true", help="replace existing output files")
    c.set_defaults(func=_cmd_count)

    r = sub.add_parser("restore", help="restore a noisy, scan-distorted image with a trained network",
                       description="Tiled neural-network restoration; output on the input's intensity scale.")
    r.add_argument("input", help="input image file")
    r.add_argument("output", help="output image file (.npy, .tif, .h5)")
    r.add_argument("--model", default="hrstem", help="registry name (see stemquant.restore.list_models())")
    r.add_argument("--device", default="auto", help="cpu, cuda or auto")
    r.add_argument("--tile", type=int, default=1024,
                   help="maximum tile side [pixels] (default 1024; memory grows with batch-size x tile²)")
    r.add_argument("--overlap", type=int, default=64,
                   help="minimum overlap of neighbouring tiles [pixels] (default 64)")
    r.add_argument("--batch-size", type=int, default=1, help="tiles per forward pass (default 1)")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    r.set_defaults(func=_cmd_restore)

    # train/evaluate own their option parsers (stemquant.restore._train/_evaluate); --help is passed through
    t = sub.add_parser("train", help="train a restoration network (config file, checkpoints, --resume)",
                       add_help=False)
    t.add_argument("args", nargs=argparse.REMAINDER)
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("evaluate", help="PSNR/SSIM of a model vs raw/Gaussian/BM3D on a fixed synthetic test set",
                       add_help=False)
    e.add_argument("args", nargs=argparse.REMAINDER)
    e.set_defaults(func=_cmd_evaluate)
    return ap


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A library warning as a user reads it on the command line: one line, no source path or code (only the
    display changes: filters and recording, e.g. by pytest, are untouched)."""
    return f"warning: {message}\n"


_PASSTHROUGH = {"train": _cmd_train, "evaluate": _cmd_evaluate}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in _PASSTHROUGH:  # these verbs parse their own options (incl. --help)
        func, args = _PASSTHROUGH[argv[0]], argparse.Namespace(args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
        args.argv, func = argv, args.func  # the command line, recorded with the outputs
    shown, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return int(func(args) or 0)
    except (ValueError, OSError) as exc:  # bad input or an unwritable/unreadable file: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
