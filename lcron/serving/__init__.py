"""Serving-style evaluation and export of a trained cascade.

* :mod:`lcron.serving.config`   - the serve-eval and export configurations (no torch: the
  pipeline reads its serving defaults from here).
* :mod:`lcron.serving.index`    - embed the item corpus with the DSSM item tower, faiss index.
* :mod:`lcron.serving.evaluate` - retrieve top-K1 from the whole corpus per test request,
  run the later stages, measure GT survival (``serving.json``); ``bench_serving``.
* :mod:`lcron.serving.export`   - export the cascade (torch.export programs, faiss index,
  item table, setting) into one folder; ``load_exported`` serves it.
* :mod:`lcron.serving.loader`   - the stand-alone loader (torch, faiss, numpy, json only).

``serving.json`` as other steps read it is :mod:`lcron.evaluation.serving_results`, below
this package with the other readers of finished results.

Nothing is imported here, so ``lcron.serving.export`` / ``loader`` load without the
training code.
"""
