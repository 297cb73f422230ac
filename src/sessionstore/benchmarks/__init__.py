"""Benchmarks of the library core, runnable as ``python -m sessionstore.benchmarks.<name>``."""
