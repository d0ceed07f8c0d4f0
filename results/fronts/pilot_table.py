"""The pilot's table: headroom of the judge on validation for each candidate degradation.

  python results/fronts/pilot_table.py results/fronts/pilot > results/fronts/pilot.md

Reads only the final validation record of each enhancement-only run (the test split is not read).
Headroom = the judge on high-quality images − the judge on enhancement-only's output.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.tools import evidence  # noqa: E402

METRICS = {"pneumoniamnist": ("balanced_accuracy", "auc"), "ph2_seg": ("dice",)}


def main(pilot: Path) -> None:
  print("# Pilot: where does the task have room? (validation, seed 0, enhancement-only)\n")
  print("Made by `results/fronts/pilot.sh`, tabulated by `results/fronts/pilot_table.py` from the "
        "final validation record of each run; the test split is not read. Judge: a recogniser "
        "trained on high-quality images only (seed 100). Headroom: the judge on high-quality "
        "images − the judge on enhancement-only's output; a setting has room when it is ≥ 0.05.\n")
  print("| setting | degradation | val PSNR | metric | judge: interpolated input | judge: enhanced "
        "| judge: high quality | headroom |")
  print("|---|---|---|---|---|---|---|---|")
  for setting, metrics in METRICS.items():
    runs = evidence.load_runs(pilot / setting / "enhance_only")
    for (row, _), run in sorted(runs.items()):
      val = run.final_validation()
      for metric in metrics:
        enhanced, high = val[f"judge_{metric}"], val[f"judge_high_quality_{metric}"]
        print(f"| {setting} | `{row}` | {val['psnr']:.2f} | {metric} | "
              f"{val[f'judge_no_enhancement_{metric}']:.4f} | {enhanced:.4f} | {high:.4f} | "
              f"{high - enhanced:+.4f} |")


if __name__ == "__main__":
  main(Path(sys.argv[1]))
