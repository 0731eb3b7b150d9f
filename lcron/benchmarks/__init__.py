"""The benchmark harness behind ``lcron bench``, in layers without circles (bottom first;
each module imports only modules listed before it):

=========================  ================================================================
``benchmarks/base.py``     the bottom: bench modes and sizes, :class:`BenchContext`, machine
                           facts, the child-process protocol (``run_worker``); it imports
                           no other module of the harness
``bench_vocab.py``         the rows at RecFlow vocabulary sizes (``TrainStep`` for the
                           resume checkpoint)
``profile.py``             the training profiler (runs ``TrainStep``)
``bench.py``               the registry and the benchmarks, the runner, the measuring
                           children (``python -m lcron.bench --worker STEP``) and
                           ``python -m lcron.bench``
``cli.py``                 ``lcron bench`` calls :func:`lcron.bench.run_benchmarks`
``benchmarks/command.py``  the child that runs an ``lcron`` command in its own process (it
                           imports ``cli.py``; the parent starts it by name)
=========================  ================================================================

Every name one file takes from another is public. This ``__init__`` imports nothing, so
importing :mod:`lcron.benchmarks.base` costs only that module.
"""
