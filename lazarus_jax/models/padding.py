"""Prompts of different lengths as one fixed-shape batch: the one padding helper of the package.

Right padding (the lens, evaluate's readouts): prompt i fills columns 0..len-1 and is read at len-1. Left
padding (generation, GRPO rollouts): every prompt ends in the last column, so all rows read out and decode there.
Rows past the prompts (a batch kept at a fixed size, so one compilation serves every batch) attend to one
token, so no softmax row sees only masked keys.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pad_prompts(
  prompt_ids: Sequence[Sequence[int]], width: int, pad_id: int, rows: int | None = None, left: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens [rows, width] int32, mask [rows, width] int32, readout [rows] int32: each prompt's last column)."""
  rows = len(prompt_ids) if rows is None else rows
  if rows < len(prompt_ids):
    raise ValueError(f"{len(prompt_ids)} prompts do not fit {rows} rows")
  tokens = np.full((rows, width), pad_id, np.int32)
  mask = np.zeros((rows, width), np.int32)
  readout = np.zeros((rows,), np.int32)
  mask[len(prompt_ids) :, -1 if left else 0] = 1
  for i, ids in enumerate(prompt_ids):
    n = len(ids)
    if n > width:
      raise ValueError(f"a prompt of {n} tokens does not fit width {width}")
    start = width - n if left else 0
    tokens[i, start : start + n] = ids
    mask[i, start : start + n] = 1
    readout[i] = start + n - 1
  return tokens, mask, readout
