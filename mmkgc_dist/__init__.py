"""mmkgc-dist: distributed AdaMF-MAT training for multi-modal knowledge graph completion."""
__version__ = "0.1.0"
