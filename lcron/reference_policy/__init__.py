"""Reference policy: what the switch ``--reference-quirks`` changes in the steps themselves.

Why a package of its own, low in the library: preprocessing, the trainer, the run-folder
reader and the evaluator all obey the switch, so the policy must sit below them; the tools
that run those steps for the reference (the importer of its checkpoints, the
faithful-vs-reference table) sit above them in :mod:`lcron.reference`.

* :mod:`lcron.reference_policy.mode` - the mode as a value recorded in shard sets, runs and
  evaluations, and the checks that the steps agree on it;
* :mod:`lcron.reference_policy.protocol` - the reference's evaluation protocol.

It imports only modules below the trainer (errors, settings, metrics, the loss registry).
"""
