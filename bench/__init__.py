"""Reproducible benchmarks of Pausepoint (not tests): ``python -m bench --help``.

Results land in ``bench/results/`` (git-ignored); the latest figures are in
``bench/README.md``.
"""
