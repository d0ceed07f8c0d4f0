"""Where the project's shared real data sits beside a checkout (`../shared/data`), if it does."""
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_path(name: str) -> str | None:
  """``../shared/data/<name>`` as a string if that folder exists, else None (then pass
  ``--config.data.manual_dir``)."""
  path = SHARED_DATA / name
  return str(path) if path.is_dir() else None
