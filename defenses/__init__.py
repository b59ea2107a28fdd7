"""The project's defenses: one module per defense, found through the rbench.plugins entry point."""
