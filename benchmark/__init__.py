"""rbench: the engine of the adversarial-robustness benchmark suite.

The engine knows no defense or attack by name: they reach it through `benchmark.registry`.
"""
