"""stemquant — quantitative atomic-resolution electron microscopy.

Data flows one way: ``structures -> simulate -> distort -> (restore) -> quant``.
See ``docs/conventions.md`` for coordinates, units and intensity scales.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
