"""Experiment tooling on top of ``gradprom_jax``: method × seed comparisons and their plots, the
paired evidence statistics, fronts over λ, the study protocol's stages, the worker pool."""
