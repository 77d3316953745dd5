"""Measurement of built artifacts: latency, memory, size, and the budget check."""
