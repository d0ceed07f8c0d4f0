"""Hooks into the real train loop (`gradprom_jax.training.train`) for the benchmarks that time it.

The loop is measured as it is, not copied: these context managers patch, for the duration of a
benchmark, the two points where the loop meets the compiled step, namely
``train.make_train_step`` (what is compiled) and ``DataParallel.compile_step`` (each call of the
compiled step).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from gradprom_jax.training import parallel as parallel_lib, train

# hook(compiled_step, state, batch, index) -> (state, metrics); index counts calls from 0.
CallHook = Callable[[Callable, Any, Any, int], tuple[Any, Any]]


@contextlib.contextmanager
def intercept_step_calls(hook: CallHook) -> Iterator[None]:
  """Every call the loop makes to its compiled train step goes through ``hook``."""
  real_compile = parallel_lib.DataParallel.compile_step
  calls = [0]

  def compile_step(self, step):
    compiled = real_compile(self, step)

    def call(state, batch):
      index, calls[0] = calls[0], calls[0] + 1
      return hook(compiled, state, batch, index)
    return call

  parallel_lib.DataParallel.compile_step = compile_step
  try:
    yield
  finally:
    parallel_lib.DataParallel.compile_step = real_compile


@contextlib.contextmanager
def replace_train_step(make_step: Callable[..., Callable]) -> Iterator[None]:
  """The loop compiles ``make_step(*args, **kwargs)`` instead of ``make_train_step``'s step."""
  real = train.make_train_step
  train.make_train_step = make_step
  try:
    yield
  finally:
    train.make_train_step = real
