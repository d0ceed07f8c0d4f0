"""The experiments run from a checkout: thin scripts (``python experiments/study.py ...``) and the
tooling they share, `experiments.tools` (sweeps, plots, evidence statistics, fronts, the study's
stages, the worker pool). None of it is installed with the ``gradprom_jax`` package; the scripts
put the repository on ``sys.path`` themselves, so they run from any directory.
"""
