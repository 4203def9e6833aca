"""The shipped run configs, one `get_config()` each. In a checkout `configs/` links here; installed, name one by
its file name from any directory: `python -m lazarus_jax.train --config smollm2_135m --workdir W` (or
`--config configs/smollm2_135m.py`: a path that does not exist is looked up here by its base name)."""

import os

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  return sorted(f[:-3] for f in os.listdir(DIR) if f.endswith(".py") and not f.startswith("_"))


def resolve(path: str) -> str:
  """`path` if it exists, else the shipped config of that base name (`tiny`, `tiny.py`, `configs/tiny.py`), else
  `path` unchanged (the caller reports it missing)."""
  if os.path.exists(path):
    return path
  name = os.path.basename(path)
  name = name[:-3] if name.endswith(".py") else name
  shipped = os.path.join(DIR, name + ".py")
  return shipped if name in names() else path
