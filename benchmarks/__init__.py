"""Benchmarks, the demo and their helpers: the only package allowed to import every other one."""
