"""Hostile or broken files in a user's image folder: a clear error naming the file (through
`experiments/main.py`: exit status 1, one message, no workdir), or skipped and counted with
``data.skip_bad=True``."""
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from gradprom_jax.data import BadInputError, default_data_config, load_dataset

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "experiments" / "main.py"


def _write_folder(root: Path, n: int = 6, size=(24, 32)) -> Path:
  """images/img<i>.png with masks/img<i>_lesion.png: a minimal segmentation folder."""
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  rng = np.random.default_rng(0)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
        root / "images" / f"img{i}.png")
    Image.fromarray((rng.random(size) > 0.5).astype(np.uint8) * 255).save(
        root / "masks" / f"img{i}_lesion.png")
  return root


def _png_claiming_size(width: int, height: int) -> bytes:
  """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""
  def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _config(manual_dir: Path, data_dir: Path, **overrides):
  config = default_data_config()
  config.update(name="image_folder", manual_dir=str(manual_dir), data_dir=str(data_dir),
                image_size=(16, 16), split_fractions=(0.5, 0.25, 0.25), **overrides)
  return config


HOSTILE = {
    "not_an_image": (lambda path: path.write_bytes(b"%PDF-1.4 definitely not a png\n" * 10),
                     "corrupt or truncated image"),
    "truncated_png": (lambda path: path.write_bytes(path.read_bytes()[:200]),
                      "corrupt or truncated image"),
    "decompression_bomb": (lambda path: path.write_bytes(_png_claiming_size(100_000, 100_000)),
                           "image too large, possibly a decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_is_named_or_skipped_and_counted(tmp_path, name):
  damage, message = HOSTILE[name]
  root = _write_folder(tmp_path / "raw")
  bad = root / "images" / "img2.png"
  damage(bad)
  with pytest.raises(BadInputError, match=f"{bad}: {message}"):
    load_dataset(_config(root, tmp_path / "tfds"))

  dataset = load_dataset(_config(root, tmp_path / "tfds", skip_bad=True))
  assert len(dataset.skipped) == 1 and str(bad) in dataset.skipped[0]
  assert sum(len(source) for source in dataset.sources.values()) == 5


def test_image_over_the_pixel_limit_is_refused_not_decoded(tmp_path, monkeypatch):
  # PIL only warns between MAX_IMAGE_PIXELS and twice that; we refuse there too.
  root = _write_folder(tmp_path / "raw")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 32 - 1)
  with pytest.raises(BadInputError, match=r"img\d.png: image too large, possibly a decompression "
                                          r"bomb \(Image size \(768 pixels\) exceeds"):
    load_dataset(_config(root, tmp_path / "tfds"))


def test_hostile_file_through_main_is_one_message_and_no_workdir(tmp_path):
  root = _write_folder(tmp_path / "raw")
  bad = root / "images" / "img3.png"
  HOSTILE["decompression_bomb"][0](bad)
  workdir = tmp_path / "run"
  completed = subprocess.run(
      [sys.executable, str(MAIN), "--config", f"{REPO}/configs/image_folder.py:smoke",
       f"--workdir={workdir}", f"--config.data.manual_dir={root}",
       f"--config.data.data_dir={tmp_path / 'tfds'}"],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert completed.returncode == 1, completed.stderr[-2000:]
  last = completed.stderr.strip().splitlines()[-1]
  assert last.startswith(f"{MAIN}: error: BadInputError: {bad}: image too large"), last
  assert "skip_bad=True" in last
  assert "Traceback" not in completed.stderr
  assert not workdir.exists()
