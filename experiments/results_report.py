r"""Assembles RESULTS.md from the committed sweep summaries and the readings written beside them.

  python experiments/results_report.py results/issue7_500 results/issue7 > RESULTS.md

Prints ``results/overview.md`` (the cross-setting reading, beside the sweep directories), then for
each sweep directory its ``about.md`` (what the sweep is: steps, machine) and, per setting, the
``<setting>/summary.md`` that `experiments/compare.py` wrote (every number in it is computed from
the runs' results.json and metrics.jsonl) followed by ``<setting>/reading.md``, the analyst's
interpretation of that table. This script only stitches them together, so no figure is typed here.
"""
import sys
from pathlib import Path


def shift_headings(markdown: str, levels: int) -> str:
  """Demotes every ``#`` heading by ``levels`` (a file's own sections nest under ours).

  >>> shift_headings("# A\\ntext #1\\n## B", 1)
  '## A\\ntext #1\\n### B'
  """
  return "\n".join("#" * levels + line if line.startswith("#") else line
                   for line in markdown.splitlines())


# Summaries written before the reference of the run's own recogniser on high-quality images was
# renamed (`high_quality` -> `hq_input`; not an upper bound when that recogniser was trained on
# enhanced images): old text -> today's.
LEGACY_SUMMARY_TEXT = {
    "| high_quality |": "| hq_input |",
    "`high_quality` on the high-quality image (no PSNR/SSIM: it is the target).":
        "`hq_input` on the high-quality image (no PSNR/SSIM: it is the target; not an upper bound "
        "when the recogniser was trained on enhanced images).",
}


def upgrade_summary(markdown: str) -> str:
  """An older summary.md with its reference names as compare.py writes them today.

  >>> upgrade_summary("| high_quality | — | 0.5 |")
  '| hq_input | — | 0.5 |'
  """
  for old, new in LEGACY_SUMMARY_TEXT.items():
    markdown = markdown.replace(old, new)
  return markdown


def setting_section(setting: Path) -> str:
  """One setting's summary (its own title dropped, plot links made repository-relative) and reading."""
  body = upgrade_summary((setting / "summary.md").read_text()).split("\n", 1)[1]  # no "# Comparison"
  text = [f"### {setting.name}\n", body.replace("](plots/", f"]({setting}/plots/").strip() + "\n"]
  reading = setting / "reading.md"
  if reading.exists():
    text.append("**Reading.** " + reading.read_text().strip() + "\n")
  return "\n".join(text)


def main(directories: list[str]) -> None:
  if not directories:
    sys.exit("usage: results_report.py SWEEP_DIR [SWEEP_DIR ...] > RESULTS.md")
  overview = Path(directories[0]).parent / "overview.md"
  if overview.exists():
    print(overview.read_text().strip() + "\n")
  for directory in map(Path, directories):
    about = directory / "about.md"
    print(shift_headings(about.read_text().strip(), 1) + "\n" if about.exists()
          else f"## {directory}\n")
    for setting in sorted(p for p in directory.iterdir() if (p / "summary.md").exists()):
      print(setting_section(setting))


if __name__ == "__main__":
  main(sys.argv[1:])
