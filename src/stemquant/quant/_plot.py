"""Figures for fit results (matplotlib ``Figure`` objects, no pyplot state, safe on headless machines)."""

from __future__ import annotations

import numpy as np


def plot_fit(image, table, pixel_size: float, *, color_by: str = "scs", ax=None, unit: str | None = None,
             title: str | None = None):
    """Image with the fitted column positions, coloured by a table column (e.g. ``scs`` or ``count``).

    Parameters
    ----------
    image : ndarray, shape (H, W)
    table : pandas.DataFrame
        One frame of ``FitResult.table`` (columns ``x``, ``y`` [Å] and ``color_by``; ``converged`` optional —
        columns that did not converge are drawn as red crosses).
    pixel_size : float
        Pixel size [Å].
    color_by : str
        Table column mapped to the marker colour.
    ax : matplotlib Axes, optional
    unit : str, optional
        Unit of ``color_by`` for the colour-bar label (e.g. ``"Å²"`` for the SCS of a normalised image).
    title : str, optional
        Axes title (e.g. which frame of a stack is shown).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 5.5), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    H, W = image.shape
    ax.imshow(image, cmap="gray", extent=(0, W * pixel_size, H * pixel_size, 0))
    conv = table["converged"].to_numpy(bool) if "converged" in table else np.ones(len(table), bool)
    sc = ax.scatter(table["x"][conv], table["y"][conv], c=table[color_by][conv], s=12, cmap="viridis",
                    edgecolors="white", linewidths=0.3)  # the dark end of the map stays visible on dark pixels
    if (~conv).any():
        ax.scatter(table["x"][~conv], table["y"][~conv], marker="x", c="r", s=20, label="not converged")
        ax.legend(loc="upper right", fontsize=8)
    fig.colorbar(sc, ax=ax, label=color_by + (f" [{unit}]" if unit else ""))
    if title:
        ax.set_title(title)
    ax.set_xlabel("x [Å]")
    ax.set_ylabel("y [Å]")
    return fig


def save_figure(fig, path, *, overwrite: bool = False, dpi: int = 120):
    """Write a figure atomically (refuses to overwrite unless ``overwrite=True``)."""
    from stemquant.io import atomic_write

    with atomic_write(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=dpi, format=str(path).rsplit(".", 1)[-1] if "." in str(path) else "png")
    return path
