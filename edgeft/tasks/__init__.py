"""Task adapters (issue 18): several tasks on one base, each with its own data, adapter and metric."""
