"""RESULTS.md is what `experiments/results_report.py` prints from the committed results.

Guards the rule that no figure in it is typed by hand: editing RESULTS.md, or a result without
rebuilding it, fails here.
"""
import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def test_results_md_is_rebuilt_from_the_committed_results():
  results_md = (REPOSITORY / "RESULTS.md").read_text()
  # The header names the exact command; rebuild with its directories.
  command = re.search(r"`python experiments/results_report.py ([^`>]+) > RESULTS.md`", results_md)
  assert command, "RESULTS.md must state the command that rebuilds it"
  directories = command.group(1).split()
  assert all((REPOSITORY / d).is_dir() for d in directories), directories
  rebuilt = subprocess.run(
      [sys.executable, "experiments/results_report.py", *directories], cwd=REPOSITORY,
      capture_output=True, text=True, check=True).stdout
  assert rebuilt == results_md, (
      "RESULTS.md is stale or edited by hand; rebuild it with the command in its header")
