"""A user's own image folder and their `experiments/main.py` commands, run as subprocesses; shared by
the tests of the data (test_data_image_folder.py, test_data_official.py) and of training's classes
(test_train_classes.py)."""
import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "experiments" / "main.py"


def write_user_folder(root: Path, n=25, minority=7) -> Path:
  """The user's folder: the labels are in `grade` (benign 18 / malignant 7); `diagnosis` holds
  free text with every fifth cell blank."""
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(root / "images" / f"img{i}.png")
    Image.fromarray((rng.random((24, 32)) > 0.5).astype(np.uint8) * 255).save(
        root / "masks" / f"img{i}_lesion.png")
    rows.append({"image_id": f"img{i}", "diagnosis": "" if i % 5 == 2 else "see notes",
                 "grade": "malignant" if i < minority else "benign"})
  with open(root / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["image_id", "diagnosis", "grade"])
    writer.writeheader()
    writer.writerows(rows)
  return root


def main_command(root: Path, name: str, config: str, extra=()) -> list[str]:
  """`experiments/main.py` on ``config`` with workdir ``root/name``, data dir ``root/name_tfds``;
  ``{raw}`` and ``{empty}`` in ``extra`` stand for ``root/raw`` and ``root/empty``."""
  paths = {"raw": root / "raw", "empty": root / "empty"}
  return [sys.executable, str(MAIN), f"--config={config}", f"--workdir={root / name}",
          f"--config.data.data_dir={root / name}_tfds", *(flag.format(**paths) for flag in extra)]


def run_all(root: Path, commands: dict[str, list[str]]) -> dict[str, tuple]:
  """Runs the commands at once (start-up time dominates): {name: (stdout + stderr, status, workdir,
  data dir)}."""
  processes = {name: subprocess.Popen(command, cwd=REPO, text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for name, command in commands.items()}
  outputs = {}
  for name, process in processes.items():
    stdout, stderr = process.communicate(timeout=600)
    outputs[name] = (stdout + stderr, process.returncode, root / name, root / f"{name}_tfds")
  return outputs


def error_line(output: str) -> str:
  """The one ``main.py: error: ...`` line of a refused command (and no traceback)."""
  errors = [line for line in output.splitlines() if ": error: " in line]
  assert len(errors) == 1 and "Traceback" not in output, output[-3000:]
  return errors[0]
