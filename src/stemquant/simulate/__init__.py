"""Image formation: STEM probe, fast incoherent HAADF model, abTEM multislice backend and SCS libraries."""

from ._abtem import abtem_scs_series, simulate_haadf_abtem
from ._library import ScsLibrary, load_scs_library
from ._probe import PRESETS, ProbeParams, aberration_phase, probe_intensity
from ._render import render_incoherent

__all__ = ["PRESETS", "ProbeParams", "ScsLibrary", "aberration_phase", "abtem_scs_series", "load_scs_library",
           "probe_intensity", "render_incoherent", "simulate_haadf_abtem"]
