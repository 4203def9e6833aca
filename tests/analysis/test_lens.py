"""The all-layer logit lens and its CLI (DESIGN.md §2, §5)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lazarus_jax.analysis import lens
from lazarus_jax.cli import lens as cli_lens
from lazarus_jax.data.targets import resolve_targets
from lazarus_jax.models.adapters import load_adapter
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.padding import pad_prompts

import repo
from tiny_runs import random_adapter_dir

REPO = repo.ROOT
PROMPTS = ["7 * 8 = ", "23 + 45 = ", "What is 48 divided by 6?", "5 - 3 = "]
SEED_PROMPTS = ["7 * 8 = ", "12 * 5 = ", "23 + 45 = ", "17 + 38 = ", "50 - 23 = ", "89 - 34 = ", "48 / 6 = ", "81 / 9 = "]


@pytest.fixture(scope="module")
def tiny():
  pre = load_pretrained("tiny-random")
  return pre.build(), pre.tokenizer


def _batch(tok, prompts, seq_len=16):
  seqs = [tok.encode(p) for p in prompts]
  return pad_prompts(seqs, seq_len, tok.pad_id), seqs


def test_last_row_is_the_models_own_softmax(tiny):
  model, tok = tiny
  (tokens, mask, readout), _ = _batch(tok, PROMPTS)
  vocab = model.cfg.vocab_size
  out = lens.all_layer_lens(model, tokens, mask, readout, np.arange(vocab), top_k=3)
  assert out["target_probs"].shape == (len(PROMPTS), model.cfg.num_layers + 1, vocab)
  want = jax.nn.softmax(model(jnp.asarray(tokens), jnp.asarray(mask)), axis=-1)
  want = np.asarray(want)[np.arange(len(PROMPTS)), readout]  # [B, V] at the readout position
  np.testing.assert_allclose(np.asarray(out["target_probs"][:, -1]), want, atol=1e-6, rtol=1e-5)
  # Ranks consistent with probs: rank = 1 + #tokens strictly more probable (up to float ties), argmax rank 1.
  probs, ranks = np.asarray(out["target_probs"]), np.asarray(out["target_ranks"])
  top_ids = np.asarray(out["top_ids"])
  np.testing.assert_array_equal(np.take_along_axis(ranks, top_ids[..., :1], -1), 1)
  np.testing.assert_allclose(np.asarray(out["top_probs"]), np.take_along_axis(probs, top_ids, -1), rtol=1e-6)
  expect = 1 + (probs[..., None, :] > probs[..., :, None]).sum(-1)
  assert np.mean(ranks == expect) > 0.99 and np.all(np.abs(ranks - expect) <= 2)
  b, r = np.nonzero(np.ones(probs.shape[:2], bool))
  for i, j in zip(b[:8], r[:8]):  # higher prob never has a worse rank
    order = np.argsort(-probs[i, j], kind="stable")
    assert np.all(np.diff(ranks[i, j][order]) >= 0)


def test_padded_batch_equals_each_prompt_alone(tiny):
  model, tok = tiny
  (tokens, mask, readout), seqs = _batch(tok, PROMPTS)
  assert len(seqs[0]) < len(seqs[1]) < len(seqs[2])  # really ragged
  ids = resolve_targets(tok).token_ids
  batch = lens.all_layer_lens(model, tokens, mask, readout, ids, top_k=5)
  for i in (0, 2):  # the shortest and the longest prompt, each compiled at its own length, unpadded
    s = seqs[i]
    alone = lens.all_layer_lens(model, np.asarray([s]), np.ones((1, len(s))), [len(s) - 1], ids, top_k=5)
    for key in ("target_probs", "top_probs"):
      np.testing.assert_allclose(np.asarray(batch[key][i]), np.asarray(alone[key][0]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(batch["target_ranks"][i]), np.asarray(alone["target_ranks"][0]))


def test_run_lens_schema_and_chunking(tiny):
  model, tok = tiny
  targets = resolve_targets(tok, prompts=PROMPTS, allow_target_in_prompt=True)
  timings = {}
  res = lens.run_lens(model, tok, PROMPTS, targets, top_k=3, batch_size=3, timings=timings)  # 2 chunks
  assert set(timings) >= {"compile_s", "run_s"}
  whole = lens.run_lens(model, tok, PROMPTS, targets, top_k=3, batch_size=8)
  assert len(res) == len(PROMPTS)
  for r, w, p in zip(res, whole, PROMPTS):
    assert r["prompt"] == p and r["token_ids"] == tok.encode(p) and r["readout_index"] == len(r["token_ids"]) - 1
    assert len(r["layers"]) == model.cfg.num_layers + 1
    first, last = r["layers"][0], r["layers"][-1]
    assert (first["row"], first["block"], first["layer"]) == (0, None, None)
    assert (last["row"], last["block"], last["layer"]) == (model.cfg.num_layers, model.cfg.num_layers - 1, model.cfg.num_layers - 1)
    assert set(last["target_probs"]) == set(targets.labels) == set(last["target_ranks"])
    assert len(last["top_tokens"]) == 3 and set(last["top_tokens"][0]) == {"token", "id", "prob"}
    for lr, lw in zip(r["layers"], w["layers"]):
      for lab in targets.labels:
        assert abs(lr["target_probs"][lab] - lw["target_probs"][lab]) < 1e-6


def test_an_adapter_changes_the_lens(tiny, tmp_path):
  base, tok = tiny
  adapted = load_pretrained("tiny-random").build()
  load_adapter(adapted, random_adapter_dir(base.cfg, tmp_path / "adapter"))
  (tokens, mask, readout), _ = _batch(tok, PROMPTS)  # same shapes as above: the base call hits the cache
  ids = resolve_targets(tok).token_ids
  a = lens.all_layer_lens(adapted, tokens, mask, readout, ids)["target_probs"]
  b = lens.all_layer_lens(base, tokens, mask, readout, ids)["target_probs"]
  np.testing.assert_allclose(np.asarray(a[:, 0]), np.asarray(b[:, 0]), atol=1e-7)  # embeddings untouched
  assert np.abs(np.asarray(a[:, -1]) - np.asarray(b[:, -1])).max() > 1e-4


def _cli(*args, cwd=REPO):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [sys.executable, "-m", "lazarus_jax.lens", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
  )


def test_cli_end_to_end(tmp_path):
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("7 * 8 = \n\n23 + 45 = \nWhat is 48 divided by 6?\n")
  out_json, out_png = tmp_path / "lens.json", tmp_path / "lens.png"
  proc = _cli(
    "--model",
    "tiny-random",
    "--prompts",
    f"@{prompts}",
    "--targets",
    "multiply,add,subtract,divide",
    "--top-k",
    "4",
    "--json",
    str(out_json),
    "--png",
    str(out_png),
  )
  assert proc.returncode == 0, proc.stderr
  assert "class targets: multiply=" in proc.stdout and "compile" in proc.stdout and "run" in proc.stdout
  doc = json.loads(out_json.read_text())
  assert doc["n_layers"] == 4 and "row" in doc["layer_convention"]
  assert [t["label"] for t in doc["targets"]] == ["multiply", "add", "subtract", "divide"]
  assert [p["prompt"] for p in doc["prompts"]] == ["7 * 8 = ", "23 + 45 = ", "What is 48 divided by 6?"]
  layer = doc["prompts"][0]["layers"][4]
  assert {"row", "block", "layer", "target_probs", "target_ranks", "top_tokens"} <= set(layer)
  assert layer["row"] == 4 and layer["block"] == layer["layer"] == 3 and len(layer["top_tokens"]) == 4
  assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def test_cli_bad_input_exits_with_one_line(tmp_path):
  out_json, out_png = tmp_path / "o.json", tmp_path / "o.png"
  proc = _cli("--model", str(tmp_path / "no-such-model"), "--prompts", "7 * 8 = ", "--json", str(out_json), "--png", str(out_png))
  assert proc.returncode == 2
  assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ") and "does not exist" in proc.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
  "args, message",
  [
    (["--prompts", "@/no/such/file"], "does not exist"),
    (["--prompts", "7 * 8 = ||1 + 2 = "], "empty prompt"),
    (["--prompts", "7 * 8 = ", "--targets", ","], "no targets"),
    (["--prompts", "7 * 8 = ", "--top-k", "0"], "top-k"),
    (["--prompts", "7 * 8 = ", "--targets", "a=add,b=adds"], "same token"),
    (["--prompts", "7 * 8 = ", "--json", "/no/such/dir/o.json"], "does not exist"),
  ],
)
def test_cli_bad_inputs_in_process(tmp_path, capsys, args, message):
  out_json = tmp_path / "o.json"
  argv = ["--model", "tiny-random", *args]
  if "--json" not in args:
    argv += ["--json", str(out_json)]
  with pytest.raises(SystemExit) as exc:
    cli_lens.run(argv)
  assert exc.value.code == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err and message in err
  assert not os.listdir(tmp_path)


@pytest.mark.embedded
def test_cli_smollm2_seed_prompts(tmp_path):
  out_json = tmp_path / "smollm2.json"
  proc = _cli("--model", "smollm2-135m", "--prompts", "|".join(SEED_PROMPTS), "--json", str(out_json))
  assert proc.returncode == 0, proc.stderr
  doc = json.loads(out_json.read_text())
  assert doc["n_layers"] == 30 and len(doc["prompts"]) == 8
  for p in doc["prompts"]:
    assert len(p["layers"]) == 31
    layer16 = next(layer for layer in p["layers"] if layer["layer"] == 16)
    assert layer16["row"] == 17
    assert all(0.0 <= v <= 1.0 for v in layer16["target_probs"].values())
    last = p["layers"][-1]
    assert abs(sum(t["prob"] for t in last["top_tokens"])) <= 1.0 + 1e-5
