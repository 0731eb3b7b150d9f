"""Tests of the evaluation: lcron/evaluate.py, lcron/metrics.py and lcron/evaluation/."""
