"""Demo material: real checkpoints and lineages built on the CPU, for tests and benchmarks.

Nothing in the core imports this package; it trains with torch and transformers (the
latter a test/benchmark dependency only).
"""
