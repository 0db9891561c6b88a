"""Gateway keys, browser tokens and per-key limits: who may call Sluice, and how much."""
