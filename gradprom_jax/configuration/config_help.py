"""The ``--help`` listing of config keys: each key's value with the comment written above it.

The comments in `gradprom_jax/configuration/config.py` (`gradprom_jax/data/config.py` and each
dataset module's ``add_config_keys`` for ``data.*``, each method's module of
`gradprom_jax/methods/` for its group) are the keys' documentation; `key_comments` reads them
from the source, so the help never drifts from it. A
comment above a group (``config.gradprom = ...``) documents every key in the group; a comment above
several assignments in a row documents each of them; a comment after the value on the same line
documents that key.
"""
from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
from collections.abc import Callable, Mapping
from typing import Any

from gradprom_jax import methods
from gradprom_jax.configuration import config as config_lib
from gradprom_jax.configuration.plain_config import flatten_config
from gradprom_jax.data import DATASETS
from gradprom_jax.data import config as data_config_lib
from gradprom_jax.tasks import TASK_KINDS

TASK_PLACEHOLDER = "<task>"

# (function that builds a part of the config, the dotted prefix its keys get in the full config).
# A multi-task config's per-task groups are documented once, for every task, as `<task>`.
DOCUMENTED_SOURCES: tuple[tuple[Callable[..., Any], str], ...] = (
    (config_lib.base_config, ""),
    (data_config_lib.default_data_config, "data."),
    (config_lib.multitask_config, ""),
    (config_lib.task_options, f"task.{TASK_PLACEHOLDER}."),
)


def documented_sources() -> tuple[tuple[Callable[..., Any], str], ...]:
  """:data:`DOCUMENTED_SOURCES` and each registered method's options, under its group's name."""
  return DOCUMENTED_SOURCES + tuple((method.options, f"{method.name}.")
                                    for method in methods.combination_methods()
                                    if method.options is not None)


# Groups keyed by task name in a multi-task config: task.<task>.*, model.recognizers.<task>.*.
PER_TASK_PARENTS = ("task", "model.recognizers")


def generic_key(key: str) -> str:
  """``key`` with a task's name in a per-task group replaced by ``<task>`` (how it is documented).

  >>> generic_key("task.classification.weight"), generic_key("model.recognizers.segmentation.name")
  ('task.<task>.weight', 'model.recognizers.<task>.name')
  >>> generic_key("task.degradation")
  'task.degradation'
  """
  for parent in PER_TASK_PARENTS:
    rest = key[len(parent) + 1:] if key.startswith(parent + ".") else None
    if rest is not None:
      name, _, tail = rest.partition(".")
      if name in TASK_KINDS:
        return ".".join(p for p in (parent, TASK_PLACEHOLDER, tail) if p)
  return key


def _dotted_target(node: ast.expr) -> str | None:
  """``config.a.b`` -> "a.b"; None for anything that is not an attribute of ``config``."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name) and node.id == "config" and parts:
    return ".".join(reversed(parts))
  return None


def comments_in_source(source: str, prefix: str = "") -> dict[str, str]:
  """{dotted key: its comment} for the ``config.<key> = ...`` assignments in ``source``.

  >>> comments_in_source('''
  ... # Global batch size.
  ... config.batch_size = 8
  ...
  ... config.gradprom.mode = "hard"   # hard | soft
  ... # Where the data is and how it is cut.
  ... config.image_size = (8, 8)
  ... config.patch_size = None
  ...
  ... config.seed = 0
  ... ''', prefix="x.")
  {'x.batch_size': 'Global batch size.', 'x.gradprom.mode': 'hard | soft', 'x.image_size': 'Where the data is and how it is cut.', 'x.patch_size': 'Where the data is and how it is cut.'}
  """
  source = textwrap.dedent(source)
  comment_on_line = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comment_on_line[token.start[0]] = token.string.lstrip("#").strip()
  lines = source.splitlines()
  comment_only = {n for n in comment_on_line if lines[n - 1].lstrip().startswith("#")}

  comments, previous_key, previous_end, previous_block = {}, None, None, None
  for node in ast.walk(ast.parse(source)):
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
      continue
    key = _dotted_target(node.targets[0])
    if key is None:
      continue
    above, line = [], node.lineno - 1
    while line in comment_only:
      above.insert(0, comment_on_line[line])
      line -= 1
    if above:
      block = " ".join(above)
    elif previous_end == node.lineno - 1 and not key.startswith(f"{previous_key}."):
      block = previous_block   # Assignments in a row share the comment above the first.
    else:
      block = None
    inline = comment_on_line.get(node.lineno) if node.lineno not in comment_only else None
    text = " ".join(t for t in (block, inline) if t)
    if text:
      comments[prefix + key] = text
    previous_key, previous_end, previous_block = key, node.end_lineno, block
  return comments


def key_comments() -> dict[str, str]:
  """{dotted key: comment} for every documented key of the full config.

  >>> key_comments()["batch_size"]
  'Global batch size over all devices and hosts.'
  >>> key_comments()["gradprom.mode"]
  'hard | soft'
  >>> key_comments()["random_gate"]
  'method=random_gate: g_e + λ g_t on a random open_rate fraction of steps (a control for the gate)'
  """
  comments = {}
  dataset_sources = tuple((spec.add_config_keys, "data.") for spec in DATASETS.values())
  for function, prefix in documented_sources() + dataset_sources:
    comments.update(comments_in_source(inspect.getsource(function), prefix))
  # The methods, each with its one line; a method's group is documented by that line.
  listing = [f"{method.name}: {method.doc}." for method in methods.combination_methods()]
  listing += [f"{schedule.name}: {schedule.doc}." for schedule in methods.SCHEDULES]
  comments["method"] = " ".join([comments.get("method", ""), *listing]).strip()
  for method in methods.combination_methods():
    comments[method.name] = f"method={method.name}: {method.doc}"
  # Each task kind's loss options: shared (task.<option>) and one task's (task.<task>.<option>).
  for kind in TASK_KINDS.values():
    for option in kind.loss_options:
      comments[f"task.{option.name}"] = option.doc
      comments[f"task.{TASK_PLACEHOLDER}.{option.name}"] = f"{option.doc} None: task.{option.name}."
  return comments


def describe_config(config: Any, comments: Mapping[str, str] | None = None) -> str:
  """Every key of ``config`` as ``key = value``, under the comments that document it.

  A group's comment is printed once, above its first key; a comment shared by keys in a row too.

  >>> print(describe_config({"seed": 0, "gradprom": {"mode": "hard", "threshold": 0.0}},
  ...                       {"seed": "Random seed.", "gradprom": "GradProm's options.",
  ...                        "gradprom.mode": "hard | soft"}))
    # Random seed.
    seed = 0
    # GradProm's options.
    # hard | soft
    gradprom.mode = 'hard'
    gradprom.threshold = 0.0
  """
  comments = key_comments() if comments is None else comments
  lines, printed = [], set()
  for key, value in flatten_config(config).items():
    parts = key.split(".")
    for depth in range(1, len(parts) + 1):
      prefix = ".".join(parts[:depth])
      comment = comments.get(prefix) or comments.get(generic_key(prefix))
      # Keys sharing one comment block are printed under it once (compared by text and depth).
      if comment and (depth, comment) not in printed:
        printed.add((depth, comment))
        lines.extend(textwrap.wrap(comment, width=100, initial_indent="  # ",
                                   subsequent_indent="  #   "))
    lines.append(f"  {key} = {value!r}")
  return "\n".join(lines)
