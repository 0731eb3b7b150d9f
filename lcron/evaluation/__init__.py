"""The parts of ``lcron evaluate`` (:mod:`lcron.evaluate` runs them in order):

* :mod:`~lcron.evaluation.quota_grid` - the quota tuples of the quota sweep;
* :mod:`~lcron.evaluation.scoring` - every stage model's logits for every candidate slot;
* :mod:`~lcron.evaluation.per_request` - the numbers of one seed's fixed scores;
* :mod:`~lcron.evaluation.results` - the evaluation folder as other steps read it
  (metric keys, mean over seeds, completion, per-request arrays).

The run folder being evaluated is read by :mod:`lcron.run_folder`.
"""
