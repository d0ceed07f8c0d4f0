"""Two processes that need the same unbuilt dataset at once: one builds, the other waits and reuses it.

Without the build lock one of them ended with TFDS's FileExistsError on the final rename.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Imports first (slow), then waits for the "go" file, so both processes start building together.
_LOAD = """
import json, logging, os, sys, time
from pathlib import Path
from gradprom_jax.data import load_dataset
from gradprom_jax.data.config import default_data_config

logging.getLogger().setLevel(logging.INFO)  # absl owns the root handler; let INFO through
config = default_data_config()
config.data_dir = sys.argv[1]
config.image_size, config.num_train, config.num_validation, config.num_test = (64, 64), 300, 50, 50
print("ready", flush=True)
while not Path(sys.argv[2]).exists():
  time.sleep(0.01)
dataset = load_dataset(config)
print(json.dumps({"pid": os.getpid(), "train": len(dataset.sources["train"]),
                  "first": float(dataset.sources["train"][0]["image"].sum())}), flush=True)
"""


def test_two_processes_build_one_dataset_at_once(tmp_path):
  data_dir, go = tmp_path / "tfds", tmp_path / "go"
  processes = [subprocess.Popen([sys.executable, "-c", _LOAD, str(data_dir), str(go)], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
  for process in processes:
    assert process.stdout.readline().strip() == "ready", process.stderr.read()[-2000:]
  go.touch()
  start = time.monotonic()
  outputs = [process.communicate(timeout=300) for process in processes]
  elapsed = time.monotonic() - start

  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
  assert all(r["train"] == 300 for r in results)
  assert results[0]["first"] == results[1]["first"]
  builders = [i for i, (_, stderr) in enumerate(outputs) if "Building synthetic_lesions" in stderr]
  assert len(builders) == 1, f"expected one build, got {len(builders)} (in {elapsed:.1f} s)"
  waiter = 1 - builders[0]
  assert (f"waiting for {processes[builders[0]].pid} " in outputs[waiter][1]
          and "building synthetic_lesions" in outputs[waiter][1]), outputs[waiter][1][-2000:]
