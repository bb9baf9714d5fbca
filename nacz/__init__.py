"""nacz: a lossless neural file compressor."""

__version__ = "0.1.0"
