"""nacz: a lossless neural file compressor."""

__version__ = "0.2.0"
