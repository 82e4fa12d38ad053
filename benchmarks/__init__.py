"""Benchmarks: scripts that print measured numbers (time, memory); they assert nothing."""
