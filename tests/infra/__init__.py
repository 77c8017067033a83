"""Real infrastructure for the tests: Debian packages, a single-node SLURM cluster, an MLflow server."""
