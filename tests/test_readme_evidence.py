"""Every figure of the README's "What the evidence shows" comes from a committed report.

Intervals ("[-0.1412, -0.0724]") and figures given to three or more decimals must stand, as written,
in a report under results/ (the reports are computed from the runs; tests/test_results_md.py keeps
RESULTS.md equal to what they rebuild), so a hand-typed or stale figure fails here.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _evidence_section() -> str:
  readme = (ROOT / "README.md").read_text()
  start = readme.index("## What the evidence shows")
  return readme[start:readme.index("\n## ", start + 1)]


def _reports() -> str:
  paths = [*ROOT.glob("results/**/*.md"), *ROOT.glob("results/**/selection.json")]
  return "\n".join(p.read_text() for p in paths)


def test_every_interval_in_the_evidence_section_is_in_a_report():
  reports = _reports()
  intervals = re.findall(r"\[([+-]?\d+\.\d+), ([+-]?\d+\.\d+)\]", _evidence_section())
  assert len(intervals) >= 10
  missing = [f"[{a}, {b}]" for a, b in intervals if f"[{a}, {b}]" not in reports]
  assert not missing, f"intervals in README not found in any committed report: {missing}"


def test_every_precise_figure_in_the_evidence_section_is_in_a_report():
  reports = _reports()
  figures = set(re.findall(r"(?<![\d.])\d+\.\d{3,}", _evidence_section()))
  assert len(figures) >= 20
  missing = sorted(f for f in figures if not re.search(rf"(?<![\d.]){re.escape(f)}(?!\d)", reports))
  assert not missing, f"figures in README not found in any committed report: {missing}"
