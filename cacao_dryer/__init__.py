"""cacao-dryer: shared core (message contract, domain science, clock, errors, CLI)."""

__version__ = "0.1.0"
