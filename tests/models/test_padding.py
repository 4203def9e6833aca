"""The one padding helper: right padding reads each prompt at its last token, left padding in the last column."""

import numpy as np
import pytest

from lazarus_jax.models.padding import pad_prompts


def test_right_padding_with_filler_rows():
  tokens, mask, readout = pad_prompts([[5, 6, 7], [8]], width=4, pad_id=0, rows=3)
  np.testing.assert_array_equal(tokens, [[5, 6, 7, 0], [8, 0, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]])  # the filler row sees one token
  np.testing.assert_array_equal(readout, [2, 0, 0])


def test_left_padding_ends_every_prompt_in_the_last_column():
  tokens, mask, readout = pad_prompts([[5, 6, 7], [8]], width=4, pad_id=9, left=True)
  np.testing.assert_array_equal(tokens, [[9, 5, 6, 7], [9, 9, 9, 8]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(readout, [3, 3])
  assert tokens.dtype == mask.dtype == readout.dtype == np.int32


def test_a_prompt_wider_than_the_batch_is_refused():
  with pytest.raises(ValueError, match="does not fit width 2"):
    pad_prompts([[1, 2, 3]], width=2, pad_id=0)
  with pytest.raises(ValueError, match="do not fit 1 rows"):
    pad_prompts([[1], [2]], width=2, pad_id=0, rows=1)
