"""Benchmark scripts: each prints a table and writes a JSON report (device, versions, shapes, timings)."""
