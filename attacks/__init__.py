"""The project's attack adapters: one module per attack, found through the rbench.plugins entry point."""
