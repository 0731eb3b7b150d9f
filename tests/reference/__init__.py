"""Tests of reference mode: lcron/reference/ (import of published checkpoints), lcron/reference_policy/
(the published protocol), the reference features and cases, and the published comparison."""
