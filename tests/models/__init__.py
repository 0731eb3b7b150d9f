"""Tests of lcron.models."""
