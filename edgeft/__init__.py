"""edgeft: an edge-deployment compiler and benchmarking harness for language models."""

__version__ = "0.1.0"
