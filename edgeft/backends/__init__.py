"""Backends: one module per backend behind the interface in `base.py`, listed in `registry.py`."""
