"""Demo material: real checkpoints and lineages built on the CPU, for tests and benchmarks.

Nothing in the core imports this package; it needs torch and transformers, which are
test/benchmark dependencies only.
"""
