"""image_folder: a user's folder (and the real PH2 copy) builds; every bad input, hostile files
included, is named or skipped and counted with ``data.skip_bad=True`` (through `experiments/main.py`:
exit status 1, one message, no workdir)."""
import csv
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from gradprom_jax.data import BadInputError, ManualDownloadError, default_data_config, load_dataset

from user_runs import error_line, main_command, run_all, write_user_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MAIN = REPO / "experiments" / "main.py"
PH2 = REPO.parent / "shared" / "data" / "ph2"


def write_folder(root: Path, n=9, size=(24, 32), labels=("a", "b", "c")):
  (root / "images").mkdir(parents=True)
  (root / "masks").mkdir()
  rng = np.random.default_rng(0)
  rows = []
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "images" / f"img{i}.png")
    Image.fromarray((rng.random(size) > 0.5).astype(np.uint8) * 255).save(root / "masks" / f"img{i}_lesion.png")
    rows.append({"image_id": f"img{i}", "diagnosis": labels[i % len(labels)]})
  write_labels(root, rows)
  return root


def write_labels(root, rows):
  with open(root / "labels.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["image_id", "diagnosis"])
    writer.writeheader()
    writer.writerows(rows)


def folder_config(manual_dir, data_dir, **overrides):
  config = default_data_config()
  config.name = "image_folder"
  config.manual_dir, config.data_dir = str(manual_dir), str(data_dir)
  config.image_size = (16, 16)
  config.split_fractions = (1 / 3, 1 / 3, 1 / 3)
  for key, value in overrides.items():
    config[key] = value
  return config


def test_folder_builds_with_stratified_deterministic_split(tmp_path):
  root = write_folder(tmp_path / "raw")
  dataset = load_dataset(folder_config(root, tmp_path / "tfds"))
  assert dataset.class_names == ("a", "b", "c") and dataset.has_mask and dataset.image_shape == (16, 16, 3)
  for split in ("train", "validation", "test"):
    labels = sorted(int(dataset.sources[split][i]["label"]) for i in range(len(dataset.sources[split])))
    assert labels == [0, 1, 2], split  # 3 per class, one per split.
  again = load_dataset(folder_config(root, tmp_path / "tfds2"))
  first = lambda d: d.sources["test"][0]["image"]
  np.testing.assert_array_equal(first(dataset), first(again))


def test_missing_folder_says_what_to_put_where(tmp_path):
  with pytest.raises(ManualDownloadError, match="images/<id>.png"):
    load_dataset(folder_config(tmp_path / "nowhere", tmp_path / "tfds"))


def corrupt(root):
  (root / "images" / "img1.png").write_bytes(b"not a png")


def truncate(root):
  data = (root / "images" / "img1.png").read_bytes()
  (root / "images" / "img1.png").write_bytes(data[: len(data) // 2])


def wrong_mask_size(root):
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img1_lesion.png")


def unknown_label(root):
  write_labels(root, [{"image_id": f"img{i}", "diagnosis": "zzz" if i == 1 else "abc"[i % 3]} for i in range(9)])


def id_without_image(root):
  write_labels(root, [{"image_id": f"img{i}", "diagnosis": "abc"[i % 3]} for i in range(10)])


def image_without_label(root):
  write_labels(root, [{"image_id": f"img{i}", "diagnosis": "abc"[i % 3]} for i in range(9) if i != 1])


@pytest.mark.parametrize("damage, message", [
    (corrupt, r"img1.png: corrupt or truncated"),
    (truncate, r"img1.png: corrupt or truncated"),
    (wrong_mask_size, r"img1_lesion.png: mask size \(10, 10\)"),
    (unknown_label, r"img1.png: label 'zzz' is not one of the classes"),
    (id_without_image, r"labels.csv: id 'img9' has no image"),
    (image_without_label, r"img1.png: image has no label"),
])
def test_bad_input_stops_the_build_naming_the_file_or_is_skipped(tmp_path, damage, message):
  root = write_folder(tmp_path / "raw")
  damage(root)
  class_names = ("a", "b", "c")
  data_dir = tmp_path / "tfds"
  with pytest.raises(BadInputError, match=message):
    load_dataset(folder_config(root, data_dir, class_names=class_names))
  # Nothing half-written: no array_record files, no dataset_info.json, no empty dataset folders
  # (only the build lock, kept on purpose: see gradprom_jax/data/file_lock.py).
  assert [p.name for p in data_dir.rglob("*") if not p.name.endswith(".build.lock")] == []

  dataset = load_dataset(folder_config(root, data_dir, class_names=class_names, skip_bad=True))
  assert len(dataset.skipped) == 1 and "img" in dataset.skipped[0]
  kept = sum(len(s) for s in dataset.sources.values())
  assert kept == (9 if damage is id_without_image else 8)


def test_failed_build_then_fixed_input_builds_cleanly(tmp_path):
  root = write_folder(tmp_path / "raw")
  good = (root / "images" / "img1.png").read_bytes()
  corrupt(root)
  with pytest.raises(BadInputError):
    load_dataset(folder_config(root, tmp_path / "tfds"))
  (root / "images" / "img1.png").write_bytes(good)
  dataset = load_dataset(folder_config(root, tmp_path / "tfds"))
  assert sum(len(s) for s in dataset.sources.values()) == 9


def test_blank_labels_are_an_error_naming_the_rows(tmp_path):
  root = write_user_folder(tmp_path / "raw")
  with pytest.raises(BadInputError, match=r"5 rows with a blank 'image_id' or 'diagnosis' \(line 4: id "
                                          r"'img2', line 9: id 'img7'.*columns are image_id, diagnosis, grade"):
    load_dataset(folder_config(root, tmp_path / "tfds"))
  assert [p.name for p in (tmp_path / "tfds").rglob("*") if not p.name.endswith(".build.lock")] == []


def test_blank_labels_are_skipped_and_counted_with_skip_bad(tmp_path):
  root = write_user_folder(tmp_path / "raw")
  dataset = load_dataset(folder_config(root, tmp_path / "tfds", skip_bad=True))
  assert dataset.class_names == ("see notes",)  # No class named "".
  assert len(dataset.skipped) == 5 and all("blank 'diagnosis'" in m for m in dataset.skipped)
  assert sum(len(s) for s in dataset.sources.values()) == 20


def test_cli_blank_labels_name_the_rows_and_the_columns(tmp_path):
  write_user_folder(tmp_path / "raw")
  output, status, workdir, _ = run_all(tmp_path, {"blank_labels": main_command(
      tmp_path, "blank_labels", "configs/image_folder.py:classification,smoke",
      ["--config.data.manual_dir={raw}"])})["blank_labels"]
  line = error_line(output)
  assert status == 1 and not workdir.exists()
  assert "BadInputError:" in line and "5 rows with a blank 'image_id' or 'diagnosis'" in line
  assert "line 4: id 'img2'" in line and "columns are image_id, diagnosis, grade" in line


def test_class_counts_per_split_are_logged(tmp_path, caplog):
  root = write_user_folder(tmp_path / "raw")
  with caplog.at_level(logging.INFO):
    dataset = load_dataset(folder_config(root, tmp_path / "tfds", label_column="grade"))
  assert dataset.class_names == ("benign", "malignant")
  assert {split: sum(c) for split, c in dataset.class_counts.items()} == {
      split: len(source) for split, source in dataset.sources.items()}
  assert [sum(c[k] for c in dataset.class_counts.values()) for k in range(2)] == [18, 7]
  line = next(r.getMessage() for r in caplog.records if "classes, examples per split" in r.getMessage())
  train, validation, test = (dataset.class_counts[s] for s in ("train", "validation", "test"))
  assert (f"'malignant' train {train[1]} / validation {validation[1]} / test {test[1]}") in line


def test_unknown_dataset_name_lists_valid_names():
  config = default_data_config()
  config.name = "imagenet"
  with pytest.raises(ValueError, match="valid names: synthetic_lesions, image_folder"):
    load_dataset(config)


@pytest.mark.skipif(not PH2.is_dir(), reason="shared PH2 copy not present")
def test_loads_the_shared_ph2_copy(tmp_path):
  config = folder_config(PH2, tmp_path, image_size=(48, 64), split_fractions=(0.7, 0.15, 0.15),
                         class_names=("common_nevus", "atypical_nevus", "melanoma"))
  dataset = load_dataset(config)
  sizes = {split: len(source) for split, source in dataset.sources.items()}
  assert sum(sizes.values()) == 200 and sizes["train"] == 140
  assert dataset.num_classes == 3 and dataset.has_mask and dataset.image_shape == (48, 64, 3)
  labels = np.array([dataset.sources["train"][i]["label"] for i in range(sizes["train"])])
  assert np.bincount(labels).tolist() == [56, 56, 28]  # Stratified 70% of 80/80/40.
  mask = dataset.sources["train"][0]["mask"]
  assert 0 < mask.mean() < 1


def _png_claiming_size(width: int, height: int) -> bytes:
  """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's header)."""
  def chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
          + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


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
  root = write_folder(tmp_path / "raw")
  bad = root / "images" / "img2.png"
  damage(bad)
  with pytest.raises(BadInputError, match=f"{bad}: {message}"):
    load_dataset(folder_config(root, tmp_path / "tfds"))

  dataset = load_dataset(folder_config(root, tmp_path / "tfds", skip_bad=True))
  assert len(dataset.skipped) == 1 and str(bad) in dataset.skipped[0]
  assert sum(len(source) for source in dataset.sources.values()) == 8


def test_image_over_the_pixel_limit_is_refused_not_decoded(tmp_path, monkeypatch):
  # PIL only warns between MAX_IMAGE_PIXELS and twice that; we refuse there too.
  root = write_folder(tmp_path / "raw")
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 24 * 32 - 1)
  with pytest.raises(BadInputError, match=r"img\d.png: image too large, possibly a decompression "
                                          r"bomb \(Image size \(768 pixels\) exceeds"):
    load_dataset(folder_config(root, tmp_path / "tfds"))


def test_hostile_file_through_main_is_one_message_and_no_workdir(tmp_path):
  root = write_folder(tmp_path / "raw")
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
