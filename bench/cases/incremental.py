"""Benchmark case incremental: see bench/run.py (to be written)."""

from bench.core import Context, Row


def run(ctx: Context) -> list[Row]:
    return []
