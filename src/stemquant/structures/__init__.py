"""Atomic models (ase) of the Pt specimens of the studies, beam along z, and their projected columns."""

from ._bulk import PT_LATTICE_CONSTANT, pt_bulk
from ._columns import project_columns
from ._dislocation import PT_POISSON_RATIO, edge_displacement, pt_edge_dislocation
from ._particle import PARTICLE_RADIUS, pt_nanoparticle

__all__ = ["PARTICLE_RADIUS", "PT_LATTICE_CONSTANT", "PT_POISSON_RATIO", "edge_displacement",
           "project_columns", "pt_bulk", "pt_edge_dislocation", "pt_nanoparticle"]
