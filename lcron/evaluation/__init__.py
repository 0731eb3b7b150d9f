"""The parts of ``lcron evaluate`` (:mod:`lcron.evaluate` runs them in order):

* :mod:`~lcron.evaluation.quota_grid` - the quota tuples of the quota sweep;
* :mod:`~lcron.evaluation.scoring` - every stage model's logits for every candidate slot;
* :mod:`~lcron.evaluation.per_request` - the numbers of one seed's fixed scores;
* :mod:`~lcron.evaluation.results` - the evaluation folder as other steps read it
  (metric keys, mean over seeds, completion, per-request arrays);
* :mod:`~lcron.evaluation.serving_results` - a serving evaluation's ``serving.json`` as other
  steps read it (the report, ``lcron compare``, the KFP metrics). It lives here, beside the
  evaluation folder's reader, and not in :mod:`lcron.serving`: the readers of finished
  results sit below the engines that write them, and :func:`~lcron.evaluation.results.is_eval_folder`
  recognises both kinds of file.

The run folder being evaluated is read by :mod:`lcron.run_folder`.
"""
