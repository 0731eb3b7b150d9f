"""The KFP pipeline of lcron: the DAG, its compilation, local runs, submission and sweeps."""
