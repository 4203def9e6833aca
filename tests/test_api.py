"""The notebook API returns what the CLI tools compute, as arrays; the README's notebook block runs."""

import os
import re

import numpy as np
import pytest

import lazarus_jax as lj
from lazarus_jax.analysis import lens as lens_lib
from lazarus_jax.data.arithmetic import encode_prompt
from lazarus_jax.errors import UserError
from lazarus_jax.models.generate import greedy_generate
from lazarus_jax.models.model import residual_stream

PROMPTS = ["7 * 8 = ", "23 + 45 = ", "90 - 12 = "]
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def tiny():
  return lj.load("tiny-random")


def test_logit_lens_equals_the_lens_tool(tiny):
  lens = lj.logit_lens(tiny, PROMPTS, top_k=3)
  tool = lens_lib.run_lens(tiny.model, tiny.tokenizer, PROMPTS, top_k=3)
  assert lens.target_probs.shape == (3, tiny.n_layers + 1, 4)
  for i, res in enumerate(tool):
    for row, layer in enumerate(res["layers"]):
      want = [layer["target_probs"][lab] for lab in lens.labels]
      np.testing.assert_allclose(lens.target_probs[i, row], want, rtol=1e-4, atol=1e-7)
      assert [t["id"] for t in layer["top_tokens"]] == lens.top_ids[i, row].tolist()
  assert lens.predicted.shape == (3, tiny.n_layers + 1)
  assert lens.top_tokens(0, 1)[0][0] == tiny.tokenizer.token_str(int(lens.top_ids[0, 1, 0]))


def test_word_list_targets_and_features_and_stream(tiny):
  lens = lj.logit_lens(tiny, PROMPTS, targets=["multiply", "add"])
  assert lens.labels == ["multiply", "add"] and lens.target_probs.shape[-1] == 2
  stream, mask = lj.residual_stream(tiny, PROMPTS)
  tokens, mask2, readout = lj.encode(tiny, PROMPTS)
  np.testing.assert_array_equal(mask, mask2)
  np.testing.assert_allclose(stream, np.asarray(residual_stream(tiny.model, tokens, mask)), atol=1e-6)
  feats = lj.readout_features(tiny, PROMPTS)
  np.testing.assert_allclose(feats, stream[:, np.arange(3), readout], atol=1e-5)


def test_generate_matches_greedy_generate(tiny):
  ids = [encode_prompt(tiny.tokenizer, p) for p in PROMPTS]
  want = greedy_generate(tiny.model, ids, 4, tiny.tokenizer.eos_id, tiny.tokenizer.pad_id)
  assert lj.generate_text(tiny, PROMPTS, max_new_tokens=4) == [tiny.tokenizer.decode(x) for x in want]


def test_fit_probes_reads_a_planted_direction():
  rng = np.random.default_rng(0)
  labels = ["a", "b"] * 40
  feats = rng.normal(size=(3, 80, 8)).astype(np.float32)
  feats[2, :, 0] += np.where(np.asarray(labels) == "a", 4.0, -4.0)  # only row 2 carries the label
  res = lj.fit_probes(feats, labels, seed=0)
  acc = res.test_accuracy
  assert acc[2] > 0.95 and acc[0] < 0.8


def test_plot_lens_writes_a_png(tiny, tmp_path):
  lj.plot_lens(lj.logit_lens(tiny, PROMPTS), str(tmp_path / "l.png"), prompt=1)
  with open(tmp_path / "l.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.embedded
def test_readme_notebook_block_runs(tmp_path, monkeypatch):
  with open(README) as f:
    block = re.search(r"## From Python.*?```python\n(.*?)```", f.read(), re.S).group(1)
  monkeypatch.chdir(tmp_path)
  scope = {}
  exec(compile(block, "README.md", "exec"), scope)
  assert scope["lens"].target_probs.shape == (2, 31, 4)
  assert scope["features"].shape == (31, 2, 576)
  assert os.path.getsize(tmp_path / "lens.png") > 1000


def test_intervene_with_no_edit_is_the_plain_model_and_an_ablation_removes_the_directions(tiny):
  prompts = ["7 * 8 = ", "23 + 45 = "]
  plain = lj.intervene(tiny, prompts, row=3)
  assert plain.texts == lj.generate_text(tiny, prompts)
  dirs = lj.class_directions(tiny)
  assert dirs.shape == (4, tiny.model.cfg.hidden_size)
  cut = lj.intervene(tiny, prompts, row=3, ablate=dirs)
  before = np.abs(plain.readout[3].astype(np.float64) @ dirs.T).max()
  after = np.abs(cut.readout[3].astype(np.float64) @ dirs.T).max()
  assert before > 1e-3 and after < 1e-4 * before  # the class words' lens directions are gone at that row only
  np.testing.assert_allclose(cut.readout[:3], plain.readout[:3], atol=1e-6)  # rows below the edit: untouched
  push = lj.intervene(tiny, prompts, row=3, add=100 * dirs[0] / np.linalg.norm(dirs[0]))
  assert not np.allclose(push.logits, plain.logits)  # later rows and the answer see the edit
  with pytest.raises(UserError, match="outside 0..4"):
    lj.intervene(tiny, prompts, row=5)


def test_position_lens_is_the_lens_tools_grid(tiny):
  grid = lj.position_lens(tiny, "7 * 8 = ")
  assert grid == lens_lib.position_lens(tiny.model, tiny.tokenizer, "7 * 8 = ")
  assert len(grid["rows"]) == tiny.n_layers + 1
