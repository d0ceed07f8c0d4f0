r"""The training entry point: trains and evaluates a task-driven enhancement system.

Intentionally short: all logic lives in `gradprom_jax.training.train`; this module parses flags
and turns expected failures into one clear message and an exit status. It runs as a module wherever
the package is installed, or through the repository's `experiments/main.py`, which calls it:

  python -m gradprom_jax.training.main --config configs/default.py --workdir workdirs/default
  python experiments/main.py --config configs/ph2.py:smoke --workdir /tmp/ph2 --config.method=joint

Running the same command again resumes from the workdir's newest checkpoint; once the run has
finished it says "already finished, results in WORKDIR/results.json" and exits 0 at once, unless
`--reevaluate` (restore the final checkpoint, score the test set again, rewrite results.json,
samples.png and the test record of metrics.jsonl).

Compiled programs are kept in JAX's persistent compilation cache, so a second run of a config skips
the compile: `~/.cache/gradprom_jax/jax` by default, `GRADPROM_COMPILATION_CACHE=DIR` to move it,
`GRADPROM_COMPILATION_CACHE=off` to turn it off; a multi-host run needs
`GRADPROM_COMPILATION_CACHE=DIR` on a shared filesystem, or runs without it (see
`gradprom_jax/training/compilation_cache.py`).
The console shows progress and results; the libraries' INFO lines are hidden (`--verbosity=1`
shows everything).

A config file takes options after a colon, comma-separated, in any order: each config's docstring
lists its own (`configs/ph2.py:classification,smoke` is PH2's diagnosis task, shrunk to a
seconds-long run). Then `--config.KEY=VALUE` overrides any key, e.g. `--config.method=joint`,
`--config.data.image_size='(64, 64)'`. Options are the way to switch the task, since they change
the models with it; `--help --config FILE[:options]` lists every key with that config's values.

Exit status:
  0    finished: results.json written.
  1    a runtime failure (unwritable or full workdir, a workdir in use by another live run, no
       restorable checkpoint, too many non-finite steps, a bad input file, a dataset's raw files
       missing, another run named by an init_from or judge.workdir missing or of another
       model); the message says what to fix.
  2    a bad command or config (unknown key, bad value, a workdir holding another config): one line
       on stderr, raised before anything is compiled, and nothing written to the workdir (except
       for the config-mismatch case, where the workdir is another run's and is left untouched).
  143  stopped by SIGTERM/SIGINT (cluster preemption): a checkpoint was saved; run the same command
       again to resume. Not 0, so that a scheduler or a retry loop never takes a preempted run for
       a finished one; 143 = 128 + SIGTERM is what a shell reports for a SIGTERM'd process.
On a multi-host run a failure before training on any host (a workdir it cannot write, its copy of
the data missing, the workdir lock) stops every host with status 1 or 2 and the same line, which
names the failed process: "process 1: WorkdirError: ...".
"""
import contextlib
from pathlib import Path
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from gradprom_jax.configuration.config import base_config
from gradprom_jax.configuration.config_help import describe_config
from gradprom_jax.configuration.config_validation import ConfigError, unknown_key_message
from gradprom_jax.data import BadInputError, ManualDownloadError
from gradprom_jax.training import train
from gradprom_jax.training.accelerator_check import warn_if_accelerators_unused
from gradprom_jax.training.checkpointing import CheckpointRestoreError, SourceRunError, WorkdirError
from gradprom_jax.training.compilation_cache import enable_compilation_cache
from gradprom_jax.training.console import hide_library_noise
from gradprom_jax.training.distributed import initialize_distributed
from gradprom_jax.training.experiment import parse_experiment
from gradprom_jax.training.host_agreement import HostFailureError
from gradprom_jax.training.run_config import ConfigMismatchError
from gradprom_jax.training.workdir_lock import WorkdirLockedError

EXIT_RUNTIME_ERROR, EXIT_USAGE_ERROR, EXIT_PREEMPTED = 1, 2, 143

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file; `file.py:smoke` shrinks it to a seconds-long run.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_REEVALUATE = flags.DEFINE_bool(
    "reevaluate", False, "On a finished run: score the test set again from the final checkpoint "
    "(without it, a finished run is left as it is).")
flags.mark_flags_as_required(["config", "workdir"])

# absl's --help lists only this file's two flags and exits 1; ours lists the config keys. --helpfull
# stays absl's.
_HELP_ARGS = ("--help", "-help", "--helpshort", "-h", "-?")
_USAGE_ERRORS = (ConfigError, ConfigMismatchError)
_RUNTIME_ERRORS = (WorkdirError, CheckpointRestoreError, train.NonFiniteTrainingError,
                   BadInputError, ManualDownloadError, WorkdirLockedError, SourceRunError)


def _exit(status: int, message: str) -> None:
  print(f"{sys.argv[0]}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _last_line(text: str) -> str:
  """The informative line of a multi-line flag error (the exception at the end of a traceback)."""
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else repr(text)


def _config_file_arg(argv: list[str]) -> str | None:
  """The ``--config`` value of a command line (``FILE.py[:options]``), or None."""
  config_args = [a.split("=", 1)[1] if a.startswith("--config=") else following
                 for a, following in zip(argv, argv[1:] + [""]) if a.split("=")[0] == "--config"]
  return config_args[-1] if config_args else None


def _unknown_override(argv: list[str]) -> str | None:
  """The message for the first ``--config.key=value`` whose key the config file does not define."""
  config_arg = _config_file_arg(argv)
  if not config_arg:
    return None
  try:
    config = flags.FLAGS["config"].parser.parse(config_arg)
  except Exception:  # pylint: disable=broad-except  # The file itself is broken: say that instead.
    return None
  for arg in argv:
    if arg.startswith("--config."):
      message = unknown_key_message(config, arg[len("--config."):].split("=", 1)[0])
      if message:
        return message
  return None


def _print_help(argv: list[str]) -> None:
  """This docstring, then every config key with its documentation; a given config's own values."""
  config_arg = _config_file_arg(argv)
  if config_arg:
    try:
      config = flags.FLAGS["config"].parser.parse(config_arg)
    except Exception as e:  # pylint: disable=broad-except  # Any failure: one line, as for a run.
      _exit(EXIT_USAGE_ERROR, f"--config {config_arg}: {_last_line(e)}")
    heading = f"Config keys (--config.KEY=VALUE) with the values of {config_arg}:"
  else:
    config = base_config()
    heading = ("Config keys (--config.KEY=VALUE) with their defaults; a config file changes some "
               "(--help --config FILE shows its values):")
  print(f"{__doc__}\n{heading}\n{describe_config(config)}\n\n"
        "--helpfull lists absl's own flags too.")


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every error as one line and exit status 2 (not a traceback)."""
  if any(arg in _HELP_ARGS for arg in argv[1:]):
    _print_help(argv)
    sys.exit(0)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    # ml_collections raises AttributeError/KeyError (with a traceback) for an unknown override key.
    _exit(EXIT_USAGE_ERROR, _unknown_override(argv) or _last_line(e))


@contextlib.contextmanager
def _expected_failures_as_exit_status():
  try:
    yield
  except _USAGE_ERRORS as e:
    _exit(EXIT_USAGE_ERROR, str(e))
  except _RUNTIME_ERRORS as e:
    _exit(EXIT_RUNTIME_ERROR, f"{type(e).__name__}: {e}")
  except HostFailureError as e:   # every host of a multi-host run prints the same line
    usage = e.error_type in {error.__name__ for error in _USAGE_ERRORS}
    _exit(EXIT_USAGE_ERROR if usage else EXIT_RUNTIME_ERROR,
          f"process {e.process_index}: {e.message if usage else f'{e.error_type}: {e.message}'}")


def main(argv):
  if len(argv) > 1:
    _exit(EXIT_USAGE_ERROR, f"unexpected arguments: {argv[1:]}")
  config, workdir = _CONFIG.value, _WORKDIR.value
  requested_verbosity = logging.get_verbosity()
  with _expected_failures_as_exit_status():
    # Quiet until the config is known to be good, so that a bad one prints exactly one line.
    logging.set_verbosity(logging.WARNING)
    # The config validated and parsed, once: everything but the device count, before touching JAX.
    experiment = parse_experiment(config)
    finished = None if _REEVALUATE.value else train.finished_results_path(workdir, experiment)
    if finished is not None:
      print(f"already finished, results in {finished} (--reevaluate scores it again)", flush=True)
      return
    initialize_distributed(experiment.distributed)
    warn_if_accelerators_unused()
    enable_compilation_cache()   # after initialising: a multi-host run needs a shared directory
    experiment.check_devices(jax.device_count())
    logging.set_verbosity(max(requested_verbosity, logging.INFO))
    hide_library_noise()
    results = train.train_and_evaluate(experiment, workdir, reevaluate=_REEVALUATE.value)
  if results is None:
    sys.exit(EXIT_PREEMPTED)
  print(f"results in {Path(workdir) / train.RESULTS_FILENAME}, "
        f"samples in {Path(workdir) / train.SAMPLES_FILENAME}", flush=True)


def run() -> None:
  """Parses the command line, then runs :func:`main`; `experiments/main.py` calls it."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
