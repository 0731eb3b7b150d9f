"""The benchmark harness behind ``lcron bench``, above the library it measures, in layers
without circles (bottom first; each module imports only modules listed before it):

===========================  ==============================================================
``base.py``                  the bottom: bench modes and sizes, :class:`BenchContext`,
                             machine facts, the child-process protocol (``run_worker``); it
                             imports no other module of the harness
``vocabulary.py``            the rows at RecFlow vocabulary sizes (the trainer's
                             ``TrainStep`` for the resume checkpoint)
``profiler.py``              the training profiler (runs the trainer's ``TrainStep``)
``suite.py``                 the registry and the benchmarks, the runner and the measuring
                             children
``__main__.py``              ``python -m lcron.benchmarks --worker STEP`` (a measured child)
                             and ``--profile METHOD`` (the profiler)
===========================  ==============================================================

Above the package: ``lcron bench`` (lcron/cli.py) calls
:func:`lcron.benchmarks.suite.run_benchmarks`, and the ``eval_proc`` row's child,
:mod:`lcron.measured_command`, runs the ``lcron`` command itself, so it stands above
cli.py, outside this package (the suite starts it by name, never imports it).

Every name one file takes from another is public. This ``__init__`` imports nothing, so
importing :mod:`lcron.benchmarks.base` costs only that module.
"""
