"""Training loop, evaluation, checkpoints, logging and runtime setup."""
