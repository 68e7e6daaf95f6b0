"""SCS-vs-number-of-atoms libraries (bundled CSVs computed with the abTEM backend)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class ScsLibrary:
    """Scattering cross-section of one atomic column as a function of the number of atoms in it.

    Parameters
    ----------
    n_atoms : ndarray of int, shape (K,)
        Tabulated column lengths [atoms], strictly increasing, starting at 0 (SCS 0).
    scs_table : ndarray, shape (K,)
        SCS [Å²] (fraction of the incident beam scattered onto the detector times Å²; Friedrich 2023,
        eq. (2.20)).
    scs_sem : ndarray, shape (K,)
        Standard error of ``scs_table`` over frozen-phonon configurations [Å²] (0 if unknown).
    name : str
        Library name.
    provenance : str
        Header of the CSV (settings, software version, command).
    """

    n_atoms: np.ndarray
    scs_table: np.ndarray
    scs_sem: np.ndarray
    name: str = ""
    provenance: str = field(default="", repr=False)

    def __post_init__(self):
        n = np.asarray(self.n_atoms)
        s = np.asarray(self.scs_table, dtype=np.float64)
        if n.ndim != 1 or n.shape != s.shape or len(n) < 2:
            raise ValueError(
                f"n_atoms and scs_table must be 1-D of equal length >= 2, got {n.shape}, {s.shape}"
            )
        if np.any(np.diff(n) <= 0) or n[0] != 0:
            raise ValueError("n_atoms must start at 0 and increase strictly")
        if not np.all(np.isfinite(s)) or s[0] != 0:
            raise ValueError("scs_table must be finite with scs_table[0] = 0 for an empty column")

    @property
    def max_atoms(self) -> int:
        """Largest tabulated column length [atoms]."""
        return int(np.asarray(self.n_atoms)[-1])

    def scs(self, n_atoms) -> np.ndarray:
        """SCS [Å²] of columns with ``n_atoms`` atoms.

        Inside the table the value is linearly interpolated (exact at tabulated integers); beyond the largest
        tabulated length it is extrapolated linearly with the slope of the last two entries (SCS grows almost
        linearly with thickness for thick Pt [001] columns; the error grows with the distance — stay inside
        ``max_atoms`` for quantitative work).

        Parameters
        ----------
        n_atoms : int or array_like
            Number(s) of atoms, >= 0 (non-integer values are interpolated).

        Returns
        -------
        scs : ndarray
            Same shape as ``n_atoms`` [Å²].
        """
        n = np.asarray(n_atoms, dtype=np.float64)
        if not np.all(np.isfinite(n)) or np.any(n < 0):
            bad = np.nanmin(n) if n.size else n
            raise ValueError(f"n_atoms must be finite and >= 0 [atoms], got min {bad}")
        x = np.asarray(self.n_atoms, dtype=np.float64)
        y = np.asarray(self.scs_table, dtype=np.float64)
        out = np.interp(n, x, y)
        beyond = n > x[-1]
        if np.any(beyond):
            slope = (y[-1] - y[-2]) / (x[-1] - x[-2])
            out = np.where(beyond, y[-1] + slope * (n - x[-1]), out)
        return out

    def counting_table(self, max_atoms: int | None = None) -> np.ndarray:
        """SCS [Å²] of columns of 1, 2, …, ``max_atoms`` atoms: the ``library_scs`` of
        :func:`stemquant.quant.count_library` (its entry ``k - 1`` is the SCS of ``k`` atoms).

        ``max_atoms`` defaults to :attr:`max_atoms`; larger values extrapolate as :meth:`scs` does.
        """
        n = self.max_atoms if max_atoms is None else max_atoms
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"max_atoms must be an integer >= 1 [atoms], got {max_atoms!r}")
        return self.scs(np.arange(1, int(n) + 1))


def _bundled_names() -> list[str]:
    """Names of the CSV libraries shipped in stemquant/data."""
    return sorted(p.name[:-4] for p in resources.files("stemquant.data").iterdir()
                  if p.name.endswith(".csv") and not p.name.endswith(".raw.csv"))


def load_scs_library(name: str | Path) -> ScsLibrary:
    """Load a bundled SCS library by name (e.g. ``"pt001_bulk"``, ``"pt001_particle"``) or a CSV path.

    The CSV has '#' provenance lines followed by columns ``n_atoms``, ``scs`` [Å²] and optionally ``scs_sem``.

    Examples
    --------
    >>> lib = load_scs_library("pt001_particle")
    >>> float(lib.scs(0))
    0.0
    """
    path = Path(name)
    if path.suffix == ".csv" and path.exists():
        text = path.read_text()
        label = path.stem
    else:
        names = _bundled_names()
        if str(name) not in names:
            raise ValueError(
                f"name must be a bundled SCS library {names} or an existing .csv path, got {name!r}"
            )
        text = resources.files("stemquant.data").joinpath(f"{name}.csv").read_text()
        label = str(name)
    header = "\n".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    df = pd.read_csv(io.StringIO(text), comment="#")
    if not {"n_atoms", "scs"} <= set(df.columns):
        raise ValueError(f"SCS library {name!r} must have columns n_atoms, scs; got {list(df.columns)}")
    df = df.sort_values("n_atoms")
    sem = df["scs_sem"].to_numpy(float) if "scs_sem" in df else np.zeros(len(df))
    return ScsLibrary(df["n_atoms"].to_numpy(int), df["scs"].to_numpy(float), sem, label, header)
