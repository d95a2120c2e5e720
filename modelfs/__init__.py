"""modelfs: version control for ML model checkpoints, used as a filesystem."""

__version__ = "0.1.0"
