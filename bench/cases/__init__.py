"""Benchmark cases: each module exposes ``run(ctx: bench.core.Context) -> list[bench.core.Row]``."""
