"""Interventions on the residual stream (interventions.py), the tuned lens, the V/O head analysis and the layer x
position lens, on the tiny model with real values: a float64 numpy reference forward, exact identities, and adapters
whose answer is known by construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lazarus_jax.analysis import interventions as iv
from lazarus_jax.analysis import lens, tuned_lens, vo_analysis
from lazarus_jax.cli import lens as cli_lens
from lazarus_jax.models.generate import greedy_generate
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.lora import LoRAConfig, add_lora
from lazarus_jax.models.model import PROJS, residual_stream

PROMPTS = ["7 * 8 = ", "What is 23 plus 45? ", "12 - 3 = ", "48 / 6 = ", "5 + 9 = "]
MAX_NEW = 4


@pytest.fixture(scope="module")
def tiny():
  pre = load_pretrained("tiny-random")
  model = pre.build()
  # As in test_generate: larger weights give varied continuations, so a wrong edit shows up in the tokens.
  for name in PROJS:
    var = getattr(model.layers, name)
    var[...] = var[...] * 6.0
  add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("v", "o"), layer_start=1, layer_end=3), seed=0)
  keys = iter(jax.random.split(jax.random.key(3), 4))
  for t in ("v", "o"):  # non-zero B: the adapters change the model
    b = getattr(model.lora, f"{t}_b")
    b[...] = 0.3 * jax.random.normal(next(keys), b[...].shape)
  tok = pre.tokenizer
  return model, tok, [tok.encode(p) for p in PROMPTS]


def _np(x):
  return np.asarray(jax.device_get(x), np.float64)


def reference_logits(model, ids, row=None, edit=None):
  """Float64 numpy forward of one prompt (LoRA included); `edit(h_readout) -> h_readout` at residual `row`."""
  cfg = model.cfg
  w = {n: _np(getattr(model.layers, n)[...]) for n in PROJS + ("attn_norm", "mlp_norm")}
  lora = model.lora
  for t, (a, b) in lora.stacked_weights().items():
    w[t] = w[t].copy()
    w[t][lora.layer_start : lora.layer_end] += lora.scale * np.einsum("lir,lro->lio", _np(a), _np(b))
  emb, g = _np(model.embed[...]), _np(model.final_norm[...])

  def rms(x, weight):
    return weight * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.rms_norm_eps)

  t, hd, group = len(ids), cfg.head_dim, cfg.num_heads // cfg.num_kv_heads
  inv = 1.0 / (cfg.rope_theta ** (np.arange(0, hd, 2) / hd))
  ang = np.arange(t)[:, None] * inv[None]
  cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

  def rope(x):
    return x * cos[:, None] + np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1) * sin[:, None]

  def hook(r, h):
    if r == row:
      h = h.copy()
      h[-1] = edit(h[-1])
    return h

  h = hook(0, emb[ids])
  causal = np.tril(np.ones((t, t), bool))
  for layer in range(cfg.num_layers):
    x = rms(h, w["attn_norm"][layer])
    q = rope((x @ w["q"][layer]).reshape(t, cfg.num_heads, hd))
    k = np.repeat(rope((x @ w["k"][layer]).reshape(t, cfg.num_kv_heads, hd)), group, axis=1)
    v = np.repeat((x @ w["v"][layer]).reshape(t, cfg.num_kv_heads, hd), group, axis=1)
    s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
    s = np.where(causal[None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    h = h + np.einsum("hts,shd->thd", p, v).reshape(t, -1) @ w["o"][layer]
    x = rms(h, w["mlp_norm"][layer])
    gate = x @ w["gate"][layer]
    h = h + (gate / (1 + np.exp(-gate)) * (x @ w["up"][layer])) @ w["down"][layer]
    h = hook(layer + 1, h)
  return rms(h[-1], g) @ emb.T


def test_identity_edit_changes_nothing_bit_for_bit(tiny):
  model, tok, ids = tiny
  n_rows, d = model.cfg.num_layers + 1, model.cfg.hidden_size
  plain = greedy_generate(model, ids, MAX_NEW, tok.eos_id, tok.pad_id)
  none = iv.run_edited(model, tok, ids, None, MAX_NEW)
  # Every row selected, but a zero basis, zero add and no patch: the edit's arithmetic runs and must be exact.
  zero = iv.run_edited(model, tok, ids, iv.make_edit(n_rows, len(ids), d, range(n_rows)), MAX_NEW)
  assert none.ids == plain == zero.ids
  np.testing.assert_array_equal(zero.readout, none.readout)
  np.testing.assert_array_equal(zero.logits, none.logits)
  # And the unedited prefill is the model's own forward (another code path: float32 rounding only).
  # (one right-padded batch: a prompt's last real position does not see the padding after it)
  width = max(map(len, ids))
  tokens = jnp.asarray([p + [tok.pad_id] * (width - len(p)) for p in ids], jnp.int32)
  mask = jnp.asarray([[1] * len(p) + [0] * (width - len(p)) for p in ids], jnp.int32)
  streams = np.asarray(residual_stream(model, tokens, mask))
  for i, p in enumerate(ids):
    stack = streams[:, i, len(p) - 1]
    np.testing.assert_allclose(none.readout[:, i], stack, atol=2e-5)
    np.testing.assert_allclose(none.logits[i], np.asarray(model.lens(stack[-1])), atol=2e-5)
    np.testing.assert_allclose(none.logits[i], reference_logits(model, p), atol=1e-4)


@pytest.mark.parametrize("row", [0, 2, 4])
def test_edits_match_a_float64_numpy_reference(tiny, row):
  model, tok, ids = tiny
  n_rows, d = model.cfg.num_layers + 1, model.cfg.hidden_size
  basis = iv.orthonormal_basis(iv.class_directions(model, [5, 17, 40]))
  add = np.random.default_rng(row).standard_normal((len(ids), d))
  run = iv.run_edited(model, tok, ids, iv.make_edit(n_rows, len(ids), d, [row], basis=basis, add=add), MAX_NEW)
  for i, p in enumerate(ids):
    ref = reference_logits(model, p, row, lambda h, i=i: h - basis @ (basis.T @ h) + add[i])
    np.testing.assert_allclose(run.logits[i], ref, atol=2e-4)
    assert not np.allclose(run.logits[i], reference_logits(model, p), atol=1e-2)  # the edit did something


def test_ablation_leaves_the_residual_orthogonal_to_the_directions(tiny):
  model, tok, ids = tiny
  n_rows, d = model.cfg.num_layers + 1, model.cfg.hidden_size
  class_ids = [5, 17, 40, 77]
  dirs = iv.class_directions(model, class_ids)
  basis = iv.orthonormal_basis(dirs)
  np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-12)
  clean = iv.run_edited(model, tok, ids, None, MAX_NEW)
  run = iv.run_edited(model, tok, ids, iv.make_edit(n_rows, len(ids), d, [2], basis=basis), MAX_NEW)
  h0, h = clean.readout[2].astype(np.float64), run.readout[2].astype(np.float64)
  assert np.max(np.abs(h @ dirs.T) / (np.linalg.norm(h, axis=-1, keepdims=True) * np.linalg.norm(dirs, axis=-1))) < 1e-6
  np.testing.assert_allclose(h, h0 - (h0 @ basis) @ basis.T, atol=1e-5)
  # Rows before the edit are untouched; the lens reads zero for every class token at the edited row.
  np.testing.assert_array_equal(run.readout[:2], clean.readout[:2])
  lens_logits = np.asarray(model.lens(jnp.asarray(run.readout[2])))[:, class_ids]
  np.testing.assert_allclose(lens_logits, 0.0, atol=1e-5)


def test_patching_a_prompt_into_itself_changes_nothing_and_the_last_row_carries_the_source(tiny):
  model, tok, ids = tiny
  n_rows, d, n = model.cfg.num_layers + 1, model.cfg.hidden_size, len(ids)
  clean = iv.run_edited(model, tok, ids, None, MAX_NEW)
  for row in range(n_rows):
    run = iv.run_edited(
      model, tok, ids, iv.make_edit(n_rows, n, d, [row], replace=clean.readout[row], patch=np.ones(n, bool)), MAX_NEW
    )
    assert run.ids == clean.ids
    np.testing.assert_array_equal(run.logits, clean.logits)
  # Another prompt's residual after the last block gives exactly that prompt's final logits.
  source = ids[::-1]
  src = iv.run_edited(model, tok, source, None, MAX_NEW)
  run = iv.run_edited(
    model, tok, ids, iv.make_edit(n_rows, n, d, [n_rows - 1], replace=src.readout[-1], patch=np.ones(n, bool)), MAX_NEW
  )
  np.testing.assert_array_equal(run.logits, src.logits)
  assert not np.allclose(run.logits, clean.logits)
  # Only patched rows change: an unpatched example in the same batch is left exactly as it was.
  patch = np.zeros(n, bool)
  patch[0] = True
  run = iv.run_edited(model, tok, ids, iv.make_edit(n_rows, n, d, [3], replace=src.readout[3], patch=patch), MAX_NEW)
  np.testing.assert_array_equal(run.logits[1:], clean.logits[1:])
  np.testing.assert_array_equal(run.readout[3, 0], src.readout[3, 0])


def test_experiments_on_the_tiny_model(tiny):
  from lazarus_jax.data import arithmetic as data_lib

  model, tok, _ = tiny
  examples = [
    data_lib.make_example(a, op, b, "symbolic")
    for a, op, b in [(7, "multiply", 8), (23, "add", 45), (50, "subtract", 23), (48, "divide", 6), (2, "add", 2)]
  ]
  prep = iv.prepare(model, tok, examples, MAX_NEW)
  class_ids = [5, 17, 40, 77]
  abl = iv.ablation(model, tok, prep, class_ids, rows=[1, 4], n_random=2)
  assert [r["row"] for r in abl["rows"]] == [1, 4] and abl["clean"]["mean_kl_from_clean"] == 0.0
  for r in abl["rows"]:
    assert len(r["random"]) == len(r["random_tokens"]) == 2
    assert 0 < r["class"]["norm_fraction_removed"] < 1 and r["class"]["mean_kl_from_clean"] >= 0
    kl = r["class"]["kl_from_clean"]  # the mean with its bootstrap interval over the 5 prompts
    assert kl["mean"] == r["class"]["mean_kl_from_clean"] and kl["ci_low"] <= kl["mean"] <= kl["ci_high"] and kl["n"] == 5
    for control in ("random", "random_tokens"):  # paired by prompt: class KL minus the control draws' mean KL
      d = r[f"kl_class_minus_{control}"]
      want = r["class"]["mean_kl_from_clean"] - np.mean([x["mean_kl_from_clean"] for x in r[control]])
      assert d["mean"] == pytest.approx(want, rel=1e-9, abs=1e-12) and d["ci_low"] <= d["mean"] <= d["ci_high"]
  steer = iv.steering(model, tok, prep, class_ids, ["multiply", "add", "subtract", "divide"], row=3, alphas=[0, 4])
  assert steer["n"] == 4  # 2 + 2 = 2 * 2: its counterpart's answer is its own, so it is left out
  zero = steer["alphas"][0]
  assert zero["class"]["changed_answer_fraction"] == 0.0 and zero["class"]["mean_kl_from_clean"] == 0.0
  assert steer["alphas"][1]["class"]["mean_kl_from_clean"] > 0
  patch = iv.patching(model, tok, prep, rows=[0, 4])
  last = patch["rows"][1]
  # Patched after the last block, the first token is the source prompt's own first token, always.
  assert last["source_output_first_token"]["accuracy"] == 1.0
  # Row 0 is the embedding of the last token, the same token ("= ") in source and target: nothing changes.
  assert patch["rows"][0]["changed_answer_fraction"] == 0.0 and patch["rows"][0]["mean_kl_from_clean"] == 0.0


def test_tuned_lens_identity_translator_is_the_logit_lens_and_training_lowers_kl(tiny):
  model, tok, ids = tiny
  run = iv.run_edited(model, tok, ids * 4, None, 1)
  vocab = tuned_lens.answer_vocabulary(run.logits, 8, [5, 17])
  unembed = np.asarray(model.unembed_matrix(), np.float32)
  g = np.asarray(model.final_norm[...], np.float32)
  eps = model.cfg.rms_norm_eps
  params = tuned_lens.init_translators(run.readout.shape[0], model.cfg.hidden_size)
  translated = tuned_lens.lens_logits_subset(g, unembed[vocab], eps, tuned_lens.translate(params, run.readout))
  np.testing.assert_allclose(translated, np.asarray(model.lens(jnp.asarray(run.readout)))[..., vocab], atol=1e-5)
  labels = np.arange(len(ids) * 4) % 2
  rows = tuned_lens.evaluate(params, run.readout, run.logits, vocab, g, unembed, eps, [5, 17], labels)
  for r in rows:
    assert r["tuned"] == r["logit"]
  assert rows[-1]["logit"]["top1_agreement"] == 1.0 and abs(rows[-1]["logit"]["kl"]) < 1e-6
  fitted, losses = tuned_lens.fit(run.readout, run.logits[:, vocab], g, unembed[vocab], eps, steps=30, learning_rate=1e-2)
  assert losses[-1] < 0.5 * losses[0]
  trained = tuned_lens.evaluate(fitted, run.readout, run.logits, vocab, g, unembed, eps, [5, 17], labels)
  assert all(t["tuned"]["kl"] < r["logit"]["kl"] for t, r in zip(trained[:-1], rows[:-1]))
  assert 0 < tuned_lens.coverage(run.logits, vocab) <= 1


def test_delta_ov_class_fraction_and_update_norms_on_adapters_built_to_answer():
  pre = load_pretrained("tiny-random")
  model = pre.build()
  cfg = model.cfg
  lora = add_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("v", "o"), layer_start=1, layer_end=3), seed=0)
  basis = iv.orthonormal_basis(iv.class_directions(model, [5, 17, 40, 77]))  # [D, 4]
  rng = np.random.default_rng(0)
  # Layer 1: o's B writes only inside the class span; layer 2: random directions.
  b_o = np.zeros(lora.o_b[...].shape, np.float32)
  b_o[0] = rng.standard_normal((4, 4)) @ basis.T
  b_o[1] = rng.standard_normal((4, cfg.hidden_size))
  lora.o_b[...] = jnp.asarray(b_o)
  out = vo_analysis.delta_ov_class_fraction(model, basis)
  assert np.all(np.isnan(out["class_fraction"][[0, 3]]))  # unadapted layers: no update
  np.testing.assert_allclose(out["class_fraction"][1], 1.0, atol=1e-6)
  assert np.all(out["class_fraction"][2] < 0.3) and out["chance"] == 4 / cfg.hidden_size
  norms = vo_analysis.update_norms(model)
  delta_o = lora.scale * np.asarray(lora.o_a[...], np.float64)[1] @ b_o[1].astype(np.float64)  # [H*hd, D]
  hd = cfg.head_dim
  expect = [np.linalg.norm(delta_o[h * hd : (h + 1) * hd]) for h in range(cfg.num_heads)]
  np.testing.assert_allclose(norms["o"]["delta"][2], expect, rtol=1e-6)
  np.testing.assert_array_equal(norms["v"]["delta"], 0.0)  # B_v is still zero


def test_token_roles_and_readout_attention(tiny):
  model, tok, ids = tiny
  for prompt, p in zip(PROMPTS, ids):
    roles = vo_analysis.token_roles(tok, prompt, p)
    pieces = {r: "".join(tok.decode([t]) for t, x in zip(p, roles) if x == r) for r in set(roles)}
    assert pieces["operator"].strip() in ("*", "+", "-", "/", "plus")
    assert pieces["operand_a"].strip() == prompt.split()[2 if prompt.startswith("What") else 0]
    assert roles[-1] == "readout_token"
  att = vo_analysis.readout_attention(model, ids[:2])
  for probs, p in zip(att, ids[:2]):
    assert probs.shape == (model.cfg.num_layers, model.cfg.num_heads, len(p))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
  by_role = vo_analysis.attention_by_role(model, tok, PROMPTS[:2], ids[:2])
  np.testing.assert_allclose(sum(by_role.values()), 1.0, atol=1e-5)


def test_position_lens_grid(tiny, tmp_path):
  model, tok, ids = tiny
  grid = lens.position_lens(model, tok, PROMPTS[0], top_k=2)
  assert grid["token_ids"] == ids[0] and len(grid["rows"]) == model.cfg.num_layers + 1
  logits = np.asarray(model(jnp.asarray([ids[0]])))[0]
  for t in range(len(ids[0])):
    assert grid["rows"][-1][t][0]["id"] == int(np.argmax(logits[t]))
    assert grid["rows"][-1][t][0]["prob"] >= grid["rows"][-1][t][1]["prob"]
  lens.save_position_png([grid, lens.position_lens(model, tok, PROMPTS[1])], str(tmp_path / "grid.png"))
  assert (tmp_path / "grid.png").stat().st_size > 0


def test_lens_cli_writes_the_layer_by_position_figure(tmp_path, capsys):
  import json

  out_json, out_png = tmp_path / "lens.json", tmp_path / "grid.png"
  with pytest.raises(SystemExit) as done:  # the command exits, as from the shell
    cli_lens.run(
      [
        "--model",
        "tiny-random",
        "--prompts",
        "7 * 8 = |What is 23 plus 45? ",
        "--json",
        str(out_json),
        "--positions-png",
        str(out_png),
      ]
    )
  assert done.value.code == 0
  doc = json.loads(out_json.read_text())
  assert [g["prompt"] for g in doc["positions"]] == ["7 * 8 = ", "What is 23 plus 45? "]
  assert len(doc["positions"][0]["rows"]) == 5 and out_png.stat().st_size > 0
  # The grid's readout column is the lens tool's own readout: one computation, two views.
  last = doc["prompts"][0]["layers"]
  assert [row[-1][0]["id"] for row in doc["positions"][0]["rows"]] == [r["top_tokens"][0]["id"] for r in last]
