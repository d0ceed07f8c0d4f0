"""RESULTS.md is what `experiments/results_report.py` prints from the committed results.

Guards the rule that no figure in it is typed by hand: editing RESULTS.md, or a result without
rebuilding it, fails here.
"""
import json
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


def _results_report():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "results_report", REPOSITORY / "experiments" / "results_report.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_a_fronts_protocol_prints_each_setting_s_fronts_and_study_then_the_pilot(tmp_path, capsys):
  fronts = tmp_path / "results" / "fronts"
  setting = fronts / "pneumoniamnist"
  setting.mkdir(parents=True)
  (fronts / "PROTOCOL.md").write_text("# Protocol\n")
  (fronts / "pilot.md").write_text("# Pilot\n\n| a |\n")
  (setting / "fronts.md").write_text("# Fronts\n\n![f](plots/fronts_auc.png)\n## Matched\n")
  (setting / "study.md").write_text("# Study\n\nNo run failed.\n")
  (setting / "reading.md").write_text("GradProm does not win here.\n")
  (setting / "seeds_0-7" / "plots").mkdir(parents=True)   # results/fronts/sensitivity.sh
  (setting / "seeds_0-7" / "fronts.md").write_text("# Fronts, seeds 0-7\n\n![s](plots/fronts_auc.png)\n")
  (setting / "seeds_0-7" / "verdicts.md").write_text("# Verdicts, seeds 0-7\n")
  (setting / "gate_steps.md").write_text("# Gate steps\n")
  (fronts / "across_settings.md").write_text("# Across settings\n")
  # Settings print in the order the across-settings report names them (the order they ran), not
  # by name: "ph2" sorts before "pneumoniamnist".
  (fronts / "across_settings.json").write_text(
      json.dumps({"settings": {"pneumoniamnist": [], "ph2": []}}))
  (fronts / "ph2").mkdir()
  (fronts / "ph2" / "fronts.md").write_text("# PH2 fronts\n")
  (fronts / "unfinished").mkdir()   # a setting still running: nothing of it is printed
  module = _results_report()
  assert module.is_fronts_directory(fronts)
  assert not module.is_fronts_directory(REPOSITORY / "results" / "pretrained_recognizer")
  module.main([str(fronts)])
  text = capsys.readouterr().out
  assert text.index("## Methods on their quality–task fronts") < text.index("### pneumoniamnist")
  assert text.index("**Reading.** GradProm does not win here.") < text.index("#### Fronts")
  assert f"![f]({setting}/plots/fronts_auc.png)" in text and "##### Matched" in text
  assert text.index("#### Study") < text.index("#### Gate steps") < (
      text.index("#### Sensitivity check: seeds 0-7 alone")) < text.index("##### Verdicts, seeds 0-7") < (
      text.index("##### Fronts, seeds 0-7")) < text.index("### Across settings") < text.index("### Pilot")
  assert f"![s]({setting}/seeds_0-7/plots/fronts_auc.png)" in text and "unfinished" not in text
  assert text.index("### pneumoniamnist") < text.index("### ph2") < text.index("### Across settings")
