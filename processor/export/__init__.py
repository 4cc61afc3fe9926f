"""The export: its contract, reading it and checking it."""
