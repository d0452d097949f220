"""srserve: disaggregated SRDiffusion serving (a large model sketches, a small model renders)."""

__version__ = "0.1.0"
