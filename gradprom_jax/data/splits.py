"""Deterministic stratified train/validation/test splits, for sources that ship fewer than three splits."""
from typing import Hashable, Sequence, TypeVar

import numpy as np

T = TypeVar("T")
SPLITS = ("train", "validation", "test")


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
  """Largest-remainder rounding of n * fractions, so the counts always sum to n."""
  exact = np.asarray(fractions, np.float64) / np.sum(fractions) * n
  counts = np.floor(exact).astype(int)
  for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
    counts[i] += 1
  return counts.tolist()


def stratified_split(items: Sequence[T], strata: Sequence[Hashable], *, fractions: Sequence[float],
                     seed: int) -> list[list[T]]:
  """Splits `items` into len(fractions) parts, each stratum (class) split in the same proportions.

  The result depends only on the items' order, their strata, the fractions and the seed.

  >>> parts = stratified_split(list(range(10)), [i % 2 for i in range(10)], fractions=(0.6, 0.2, 0.2), seed=0)
  >>> [len(p) for p in parts]
  [6, 2, 2]
  """
  if any(f < 0 for f in fractions) or sum(fractions) <= 0:
    raise ValueError(f"split fractions must be non-negative with a positive sum, got {tuple(fractions)}")
  rng = np.random.default_rng(seed)
  # Systematic sampling: give each item its quantile within its stratum (random order, random offset),
  # sort all items by it and cut at the global counts. Totals are exact; each stratum is within one item.
  strata = list(strata)
  position = np.empty(len(items))
  for stratum in sorted(set(strata), key=repr):
    members = np.flatnonzero([s == stratum for s in strata])
    position[members[rng.permutation(len(members))]] = (np.arange(len(members)) + rng.uniform()) / len(members)
  order = np.argsort(position, kind="stable")
  bounds = np.cumsum([0] + _allocate(len(items), fractions))
  parts = [[items[i] for i in order[start:stop]] for start, stop in zip(bounds[:-1], bounds[1:])]
  return parts


def complete_splits(splits: dict[str, list[T]], strata_of, *, fractions: Sequence[float],
                    seed: int) -> dict[str, list[T]]:
  """Fills in the missing validation/test splits by carving them out of train, stratified.

  `splits` must hold "train"; a shipped validation or test split is kept as it is.

  >>> out = complete_splits({"train": list(range(20))}, lambda i: i % 2, fractions=(0.5, 0.25, 0.25), seed=0)
  >>> {k: len(v) for k, v in out.items()}
  {'train': 10, 'validation': 5, 'test': 5}
  """
  unknown = set(splits) - set(SPLITS)
  if unknown or "train" not in splits:
    raise ValueError(f"splits must include 'train' and only {SPLITS}, got {sorted(splits)}")
  missing = [name for name in SPLITS[1:] if name not in splits]
  if not missing:
    return dict(splits)
  wanted = ["train"] + missing
  carved = stratified_split(splits["train"], [strata_of(x) for x in splits["train"]],
                            fractions=[fractions[SPLITS.index(name)] for name in wanted], seed=seed)
  return {**splits, **dict(zip(wanted, carved))}
