r"""Assembles RESULTS.md from the committed results and the readings written beside them.

  python experiments/results_report.py results/pretrained_recognizer results/multitask \
      results/scratch_recognizer_500steps results/scratch_recognizer_100steps > RESULTS.md

(the exact command is in RESULTS.md's header; tests/test_results_md.py checks the file is its output)

Prints ``results/header.md``, then for each directory:

* a *fronts* directory (``PROTOCOL.md`` and settings holding ``fronts.md``, e.g.
  ``results/fronts``): per setting its reading, the fronts and matched comparisons that
  `experiments/evidence_report.py fronts` wrote (``fronts.md``, plots) and the study's run record
  (``study.md``), then the pilot that chose the settings (``pilot.md``);
* a *protocol* directory (one holding ``PROTOCOL.md``, e.g. ``results/pretrained_recognizer``): the
  table of the paper's claims × setting that `experiments/evidence_report.py claims` computes from
  each setting's ``claims.json`` and the gate-reliability table (setting × batch) from the probe
  rows, then per setting its ``reading.md`` (the analyst's interpretation),
  ``report.md`` (paired differences, claims, gate reliability, fronts) and ``lambda_selection.md``
  (λ chosen on validation), all written by `experiments/evidence_report.py`;
* a *sweep* directory of the earlier protocol: ``results/overview.md`` once, its ``about.md`` and,
  per setting, the ``summary.md`` that `experiments/compare.py` wrote, then ``reading.md``.

This script only stitches files together, so no figure is typed here.
"""
import importlib.util
import json
import sys
from pathlib import Path

_EVIDENCE_REPORT = Path(__file__).resolve().parent / "evidence_report.py"


def shift_headings(markdown: str, levels: int) -> str:
  """Demotes every ``#`` heading by ``levels`` (a file's own sections nest under ours).

  >>> shift_headings("# A\\ntext #1\\n## B", 1)
  '## A\\ntext #1\\n### B'
  """
  return "\n".join("#" * levels + line if line.startswith("#") else line
                   for line in markdown.splitlines())


def setting_section(setting: Path) -> str:
  """One setting's summary (its own title dropped, plot links made repository-relative) and reading."""
  body = (setting / "summary.md").read_text().split("\n", 1)[1]  # no "# Comparison"
  text = [f"#### {setting.name}\n", body.replace("](plots/", f"]({setting}/plots/").strip() + "\n"]
  reading = setting / "reading.md"
  if reading.exists():
    text.append("**Reading.** " + reading.read_text().strip() + "\n")
  return "\n".join(text)


def _evidence_report_module():
  spec = importlib.util.spec_from_file_location("evidence_report", _EVIDENCE_REPORT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Seed-paired re-readings of a setting's chosen rows on the metrics that see the cost (balanced
# accuracy beside AUC), and the amount-of-task-gradient control (random gate against joint training).
COST_REPORTS = ("threshold_metrics.md", "amount_control.md")


# The protocol's pre-registered sensitivity check of each setting (seeds made on one machine).
SENSITIVITY_DIR = "seeds_0-7"
# A post-hoc description of a fronts setting's runs: on which steps the gate opened
# (results/fronts/gate_steps.py).
GATE_STEPS = "gate_steps.md"
# The settings' comparisons as one family, for a claim spanning them (evidence_report.py across).
ACROSS_SETTINGS = "across_settings.md"


def is_fronts_directory(directory: Path) -> bool:
  return (directory / "PROTOCOL.md").exists() and any(
      (p / "fronts.md").exists() for p in directory.iterdir())


def _relinked(markdown: str, levels: int, setting: Path) -> str:
  """A report nested ``levels`` headings down, its plot links made repository-relative."""
  return shift_headings(markdown.strip(), levels).replace("](plots/", f"]({setting}/plots/")


def fronts_settings(directory: Path) -> list[Path]:
  """A fronts protocol's settings in the order its across-settings report names them (the order
  they ran), then any other setting with a fronts.md by name."""
  settings = sorted(p for p in directory.iterdir() if (p / "fronts.md").exists())
  across = directory / ACROSS_SETTINGS.replace(".md", ".json")
  named = list(json.loads(across.read_text())["settings"]) if across.exists() else []
  return sorted(settings, key=lambda p: (named.index(p.name) if p.name in named else len(named),
                                         p.name))


def fronts_section(directory: Path) -> str:
  """A fronts protocol: per setting its reading, fronts.md, study.md, gate_steps.md and its
  sensitivity check's verdicts.md and fronts.md; then the settings as one family; then the pilot."""
  text = ["## Methods on their quality–task fronts (fronts protocol)\n",
          f"Protocol, fixed before the runs: [{directory}/PROTOCOL.md]({directory}/PROTOCOL.md). "
          "Every method is run over its whole λ path; methods are compared seed-paired at matched "
          "PSNR loss, at matched task gain and by the area of their fronts, with the random gate at "
          "GradProm's own open rate as the control for the amount of task gradient. Computed by "
          "`experiments/evidence_report.py fronts`.\n"]
  for setting in fronts_settings(directory):
    text.append(f"### {setting.name}\n")
    reading = setting / "reading.md"
    if reading.exists():
      text.append("**Reading.** " + reading.read_text().strip() + "\n")
    for name in ("fronts.md", "study.md", GATE_STEPS):
      if (setting / name).exists():
        text.append(_relinked((setting / name).read_text(), 3, setting) + "\n")
    sensitivity = setting / SENSITIVITY_DIR
    if (sensitivity / "fronts.md").exists():   # results/fronts/sensitivity.sh
      text.append(f"#### Sensitivity check: {SENSITIVITY_DIR.replace('_', ' ')} alone\n")
      for name in ("verdicts.md", "fronts.md"):
        if (sensitivity / name).exists():
          text.append(_relinked((sensitivity / name).read_text(), 4, sensitivity) + "\n")
  if (directory / ACROSS_SETTINGS).exists():   # evidence_report.py across
    text.append(_relinked((directory / ACROSS_SETTINGS).read_text(), 2, directory) + "\n")
  if (directory / "pilot.md").exists():
    text.append(_relinked((directory / "pilot.md").read_text(), 2, directory) + "\n")
  return "\n".join(text)


def protocol_section(directory: Path) -> str:
  """A protocol directory: the claims × setting table, then each setting's reading and reports."""
  settings = sorted(p for p in directory.iterdir() if (p / "claims.json").exists())
  if not settings:   # side studies only: the protocol, then each study
    text = [f"## {directory.name.replace('_', ' ').capitalize()} experiments\n",
            f"Protocol, fixed before the runs: [{directory}/PROTOCOL.md]({directory}/PROTOCOL.md).\n"]
    return "\n".join(text + _side_studies(directory, label="Experiment"))
  text = [f"## The paper's claims, per setting ({directory.name.replace('_', ' ')} protocol)\n",
          f"Protocol, fixed before the runs: [{directory}/PROTOCOL.md]({directory}/PROTOCOL.md). "
          "Each cell: the verdict and the statistic behind it (seed-paired difference, "
          "Bonferroni interval), computed by `experiments/evidence_report.py claims`. **better**: "
          "the interval lies above 0; **holds**: above −margin (non-inferior: a tie counts, it is "
          "not a win); **does not hold**: below −margin; **undecided**: otherwise. Margins: PSNR "
          "0.1 dB (claim 2: 0.5 dB), SSIM 0.005, task metrics 0.01.\n"]
  if settings:
    text.append(_evidence_report_module().claims_table(settings) + "\n")
    gates = _evidence_report_module().gate_reliability_table(settings)
    if gates:
      text += ["### Is the gate deciding on signal? (gate reliability, every setting)\n",
               "GradProm at each setting's chosen λ, seed 0, a probe every 10 steps: the cosine of "
               "g_e and g_t on two disjoint halves of the batch. If the sign of the cosine were "
               "signal, the halves would agree well above half the time; p is the exact binomial "
               "test against a coin flip (0.5), not adjusted for the number of rows. Computed by "
               "`experiments/evidence_report.py` from the probe rows (`gp_batch<N>`).\n",
               gates + "\n"]
  for setting in settings:
    text.append(f"### {setting.name}\n")
    reading = setting / "reading.md"
    if reading.exists():
      text.append("**Reading.** " + reading.read_text().strip() + "\n")
    for name in ("report.md", *COST_REPORTS, "lambda_selection.md"):
      path = setting / name
      if path.exists():
        body = shift_headings(path.read_text().strip(), 3)
        text.append(body.replace("](plots/", f"]({setting}/plots/") + "\n")
  pending = sorted(p for p in directory.iterdir()
                   if (p / "lambda_selection.md").exists() and not (p / "claims.json").exists())
  for setting in pending:   # a sweep cut off after its λ selection: shown, not yet in the claims
    text.append(f"### {setting.name}: λ chosen, seed runs not yet made\n")
    body = shift_headings((setting / "lambda_selection.md").read_text().strip(), 3)
    text.append(body + "\n")
  return "\n".join(text + _side_studies(directory))


def _side_studies(directory: Path, label: str = "Side study") -> list[str]:
  """Studies whose rows are named freely, one reference row against the rest (`evidence_report.py
  paired`), each with its reading."""
  text = []
  for study in sorted(p for p in directory.iterdir() if (p / "paired.md").exists()):
    text.append(f"### {label}: {study.name}\n")
    reading = study / "reading.md"
    if reading.exists():
      text.append("**Reading.** " + reading.read_text().strip() + "\n")
    body = shift_headings((study / "paired.md").read_text().strip(), 3)
    text.append(body.replace("](plots/", f"]({study}/plots/") + "\n")
  return text


def main(directories: list[str]) -> None:
  if not directories:
    sys.exit("usage: results_report.py DIR [DIR ...] > RESULTS.md")
  paths = list(map(Path, directories))
  header = paths[0].parent / "header.md"
  if header.exists():
    print(header.read_text().strip() + "\n")
  overview_printed = False
  for directory in paths:
    if is_fronts_directory(directory):
      print(fronts_section(directory))
      continue
    if (directory / "PROTOCOL.md").exists():
      print(protocol_section(directory))
      continue
    overview = directory.parent / "overview.md"
    if not overview_printed and overview.exists():
      print(shift_headings(overview.read_text().strip(), 1) + "\n")
      overview_printed = True
    about = directory / "about.md"
    print(shift_headings(about.read_text().strip(), 2) + "\n" if about.exists()
          else f"### {directory}\n")
    for setting in sorted(p for p in directory.iterdir() if (p / "summary.md").exists()):
      print(setting_section(setting))


if __name__ == "__main__":
  main(sys.argv[1:])
