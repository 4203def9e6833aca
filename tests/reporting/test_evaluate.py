"""Evaluation: metrics on batches whose answers are known by construction, and the end-to-end run from disk."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from lazarus_jax import settings
from lazarus_jax.analysis import lens, stats
from lazarus_jax.analysis.stats import wilson_interval
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data.targets import resolve_targets
from lazarus_jax.models.loading import load_pretrained
from lazarus_jax.models.padding import pad_prompts
from lazarus_jax.reporting import evaluate, report

import repo

REPO = repo.ROOT
sys.path.insert(0, REPO)
from configs import tiny as tiny_config  # noqa: E402

LABELS = ["add", "divide", "multiply", "subtract"]


def test_classifier_metrics_on_known_predictions():
  # 8 examples, 4 classes; rows 0-5 put most class mass on the label, rows 6-7 on another class.
  y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
  pred = np.array([0, 1, 2, 3, 0, 1, 3, 0])
  probs = np.full((8, 4), 0.01)
  probs[np.arange(8), pred] = np.linspace(0.2, 0.9, 8)
  class_ids = np.array([10, 11, 12, 13])
  top1 = np.where(np.arange(8) < 3, class_ids[y], 99)  # the label token is the vocab argmax in rows 0-2 only
  m = evaluate.classifier_metrics(probs, top1, y, class_ids, LABELS)
  assert m["n"] == 8 and m["n_correct"] == 6 and m["accuracy"] == 0.75
  assert (m["ci_low"], m["ci_high"]) == wilson_interval(6, 8)
  assert m["vocab_top1_accuracy"] == 3 / 8
  np.testing.assert_allclose(m["mean_confidence"], np.mean(np.linspace(0.2, 0.9, 8)))
  np.testing.assert_allclose(m["mean_correct_prob"], (np.sum(np.linspace(0.2, 0.9, 8)[:6]) + 0.02) / 8)
  want = np.zeros((4, 4), int)
  for t, p in zip(y, pred):
    want[t, p] += 1
  assert m["confusion"] == {"labels": LABELS, "matrix": want.tolist()}


def test_wilson_interval_on_known_counts():
  # Reference values worked by hand from the Wilson formula (z = 1.959964): 2/8 as in the seed's 25%, 0/10, 10/10, 50/100.
  np.testing.assert_allclose(wilson_interval(2, 8), (0.07148, 0.59072), atol=5e-5)
  np.testing.assert_allclose(wilson_interval(0, 10), (0.0, 0.27753), atol=5e-5)
  np.testing.assert_allclose(wilson_interval(10, 10), (0.72247, 1.0), atol=5e-5)
  np.testing.assert_allclose(wilson_interval(50, 100), (0.40383, 0.59617), atol=5e-5)


def test_select_examples_caps_per_op_and_format_and_keeps_seed_prompts():
  splits = data_lib.make_splits(formats=("symbolic", "semantic"), n_eval_per_op=20, seed=0)
  for cap in (1, 5):
    ex = evaluate.select_examples(splits.eval, splits.seed_prompts, cap, seed=0)
    seed_keys = {(e.prompt, e.fmt) for e in splits.seed_prompts}
    assert seed_keys <= {(e.prompt, e.fmt) for e in ex}
    for op in data_lib.OPERATIONS:
      for fmt in ("symbolic", "semantic"):
        n = sum(e.operation == op and e.fmt == fmt for e in ex)
        assert n == max(cap, 2)  # the seed has 2 prompts per operation, always kept
    # The same triples in both formats: formats compare on the same problems.
    by_fmt = [{e.triple for e in ex if e.fmt == f} for f in ("symbolic", "semantic")]
    assert by_fmt[0] == by_fmt[1]


def test_capped_heldout_set_is_a_random_subset_not_the_easy_problems():
  # Issue 10.1: with eval sorted by (a, b) and the first `cap` kept, capped multiply operands averaged ~7.
  splits = data_lib.make_splits(formats=("symbolic",), n_eval_per_op=200, seed=0)
  full = [e.a * e.b for e in splits.eval if e.operation == "multiply"]
  capped = [e.a * e.b for e in evaluate.select_examples(splits.eval, splits.seed_prompts, 50, seed=0) if e.operation == "multiply"]
  assert len(capped) == 50
  sd = np.std(full) / np.sqrt(50)
  assert abs(np.mean(capped) - np.mean(full)) < 4 * sd, (np.mean(capped), np.mean(full))
  other = evaluate.select_examples(splits.eval, splits.seed_prompts, 50, seed=1)
  assert {e.triple for e in other} != {e.triple for e in evaluate.select_examples(splits.eval, splits.seed_prompts, 50, seed=0)}


def test_probe_control_is_per_type_and_learnable_from_types():
  # Issue 10.3: a permuted-label control scores chance whatever the features; a per-type control does not when
  # the features carry the type. Features here: a one-hot of the first operand (the type) plus noise.
  rng = np.random.default_rng(0)
  splits = data_lib.make_splits(formats=("symbolic",), n_eval_per_op=100, seed=0)
  ex = splits.eval
  y = np.asarray([data_lib.label_index(e.operation, LABELS) for e in ex])
  types = sorted({evaluate.control_type(e) for e in ex})
  onehot = np.zeros((len(ex), len(types)), np.float32)
  onehot[np.arange(len(ex)), [types.index(evaluate.control_type(e)) for e in ex]] = 1.0
  feats = np.stack([onehot + 0.01 * rng.normal(size=onehot.shape)] * 2).astype(np.float32)  # two "rows"
  c = tiny_config.get_config()
  c.eval.probe_steps = 300
  types_of = [evaluate.control_type(e) for e in ex]
  out = evaluate.probe_format(feats, y, [[1]] * len(ex), settings.parse(c), LABELS, control_types=types_of)
  assert out["summary"]["config"]["control"] == "per_type"
  ctrl = out["layers"][0]["control_accuracy"]
  assert ctrl > 0.5, ctrl  # memorised by type, far above the 1/4 a permutation gives
  permuted = evaluate.probe_format(feats, y, [[1]] * len(ex), settings.parse(c), LABELS)
  assert permuted["layers"][0]["control_accuracy"] < 0.4


@pytest.fixture(scope="module")
def tiny():
  pre = load_pretrained("tiny-random")
  return pre.build(), pre.tokenizer


def test_readout_states_equal_the_lens_tool(tiny):
  model, tok = tiny
  prompts = ["7 * 8 = ", "23 + 45 = ", "What is 48 divided by 6?", "5 - 3 = ", "81 / 9 = "]
  ids = [data_lib.encode_prompt(tok, p) for p in prompts]
  targets = resolve_targets(tok)
  out = evaluate.readout_states(model, ids, targets.token_ids, batch_size=2, pad_id=tok.pad_id)  # 3 batches
  r = model.cfg.num_layers + 1
  assert out["hidden"].shape == (r, len(prompts), model.cfg.hidden_size)
  seq_len = 16
  tokens, mask, readout = pad_prompts(ids, seq_len, tok.pad_id)
  ref = lens.all_layer_lens(model, tokens, mask, readout, targets.token_ids, top_k=1)
  np.testing.assert_allclose(out["class_probs"], np.asarray(ref["target_probs"]), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(out["top1"], np.asarray(ref["top_ids"])[..., 0])


def _identity_model(tiny_pair, class_ids):
  """The tiny model with every block's output zeroed (o, down = 0): each residual row equals the embedding.

  Class tokens get large orthogonal embeddings, so at every row the lens's argmax is the readout token's own
  class token: the lens predicts the class whose word ends the prompt, by construction.
  """
  pre = load_pretrained("tiny-random")
  model = pre.build()
  model.layers.o[...] = jnp.zeros_like(model.layers.o[...])
  model.layers.down[...] = jnp.zeros_like(model.layers.down[...])
  emb = np.asarray(model.embed[...]).copy()
  for k, t in enumerate(class_ids):
    emb[t] = 0.0
    emb[t, k] = 10.0
  model.embed[...] = jnp.asarray(emb)
  return model, pre.tokenizer


def test_evaluate_model_on_a_crafted_model_whose_answer_is_known(tiny):
  _, tok = tiny
  targets = resolve_targets(tok)
  model, tok = _identity_model(tiny, targets.token_ids)
  # Prompts end with a class word; two examples carry a label different from their final word.
  rows = [
    ("multiply", "multiply"),
    ("add", "add"),
    ("subtract", "subtract"),
    ("divide", "divide"),
    ("multiply", "multiply"),
    ("add", "add"),
    ("subtract", "add"),
    ("divide", "multiply"),
  ]
  examples = [
    data_lib.Example(prompt=f"{i + 3} then {word}", answer=" 1", operation=label, a=None, b=None, fmt="symbolic")
    for i, (label, word) in enumerate(rows)
  ]
  for ex, (_, word) in zip(examples, rows):  # the readout token is the class word's own token
    assert data_lib.encode_prompt(tok, ex.prompt)[-1] == targets.token_ids[targets.index(word)]
  c = tiny_config.get_config()
  c.eval.probes = False
  c.eval.generate = False
  timing = {}
  res = evaluate.evaluate_model(model, tok, examples, targets, 2, settings.parse(c), timing, "crafted")
  cls = res["classifier_eval"]
  assert cls["n"] == 8 and cls["n_correct"] == 6 and cls["accuracy"] == 0.75
  assert cls["vocab_top1_accuracy"] == 0.75  # the class token is the argmax over the whole vocabulary
  assert cls["mean_confidence"] > 0.9
  m = np.asarray(cls["confusion"]["matrix"])
  li = {lab: k for k, lab in enumerate(cls["confusion"]["labels"])}
  assert m[li["subtract"], li["add"]] == 1 and m[li["divide"], li["multiply"]] == 1 and np.trace(m) == 6
  assert len(res["lens"]) == model.cfg.num_layers + 1
  for row in res["lens"]:  # identical rows: the same answer at every layer
    assert row["accuracy"] == 0.75 and row["by_format"]["symbolic"]["accuracy"] == 0.75
  assert res["lens"][0]["layer"] is None and res["lens"][3]["layer"] == 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A short tiny training run that ends with the evaluation (train.run -> evaluate.run)."""
  from lazarus_jax.cli.train import train_and_evaluate

  workdir = str(tmp_path_factory.mktemp("run"))
  c = tiny_config.get_config()
  c.train.steps = 6
  c.train.log_every = 3
  c.train.checkpoint_every = 6
  c.eval.max_examples_per_op = 6
  c.eval.probe_steps = 50
  c.eval.max_new_tokens = 3
  train_and_evaluate(c, workdir)
  return c, workdir


def test_end_to_end_results_schema_report_and_figures(trained):
  c, workdir = trained
  out = os.path.join(workdir, "eval")
  for name in ("results.json", "report.md", "lens_heatmap.png", "lens_accuracy.png", "probes_vs_lens.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "results.json")) as f:
    r = json.load(f)
  assert r["schema_version"] == 1 and r["evaluated"] == "adapted"
  assert r["classifier_layer"] == 2 and r["lens_row"] == 3
  assert r["model"]["adapter"] == "adapter" and r["model"]["name"] == "tiny-random"  # no machine paths
  assert workdir not in json.dumps(r) and workdir not in open(os.path.join(out, "report.md")).read()
  assert r["split"]["check"].startswith("verified") and r["split"]["n_heldout_triples"] == 64
  for key in ("classifier_eval", "lens", "probes", "answer_accuracy", "base", "provenance", "training"):
    assert r[key] is not None, key
  for model in (r, r["base"]):
    cls = model["classifier_eval"]
    assert {"accuracy", "ci_low", "ci_high", "vocab_top1_accuracy", "mean_confidence", "confusion", "results"} <= set(cls)
    assert len(cls["results"]) == 8  # the seed's prompts
    for row in cls["results"]:
      assert set(row) >= {"prompt", "expected", "predicted", "confidence", "correct"}
    assert len(model["lens"]) == 5
    # The classifier at L is row L+1 of the all-layer lens: one computation, two views.
    assert model["lens"][3]["accuracy"] == cls["accuracy"]
    assert sum(map(sum, cls["confusion"]["matrix"])) == cls["n"] == r["n_eval"]["symbolic"] == 24
    pr = model["probes"]["by_format"]["symbolic"]
    assert len(pr["layers"]) == 5 and {"test_accuracy", "selectivity", "control_accuracy"} <= set(pr["layers"][0])
    assert "accuracy" in pr["lexical_baseline"]
    ans = model["answer_accuracy"]
    assert ans["n"] == 24 and set(ans["by_format"]["symbolic"]["by_operation"]) == set(data_lib.OPERATIONS)
    assert ans["first_token_accuracy"]["n"] == 24
    pe = model["per_example"]
    assert len(pe["key"]) == 24 and len(pe["answer_correct"]) == 24 and len(pe["first_token_correct"]) == 24
    assert len(pe["lens_correct"]) == 5 and all(len(b) == 24 for b in pe["lens_correct"])
    # The per-example bits are the numbers the summaries were computed from.
    assert stats.unbits(pe["answer_correct"]).sum() == ans["n_correct"]
    assert stats.unbits(pe["lens_correct"][3]).sum() == cls["n_correct"]
  prov = r["provenance"]
  assert prov["seed"] == 0 and prov["config"]["classifier"]["layer"] == 2 and prov["git"]["commit"]
  assert prov["versions"]["jax"] and prov["devices"]["platform"]
  text = open(os.path.join(out, "report.md")).read()
  for needle in (
    "| Prompt | Expected | Predicted | Confidence | Correct |",
    "Lexical baseline",
    "## Answers",
    "Was there one before training?",
    "lens_accuracy.png",
    "### Training Metrics",
  ):
    assert needle in text, needle


def test_evaluate_from_disk_with_an_adapter_path_reproduces_train_end_eval(trained, tmp_path):
  c, workdir = trained
  c2 = tiny_config.get_config()
  c2.eval.max_examples_per_op = 6
  c2.eval.adapter = os.path.join(workdir, "adapter")
  c2.eval.compare_base = False
  c2.eval.probes = False
  c2.eval.generate = False
  r = evaluate.run(c2, str(tmp_path))
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    first = json.load(f)
  assert r["base"] is None and r["probes"] is None and r["answer_accuracy"] is None
  assert r["classifier_eval"]["accuracy"] == first["classifier_eval"]["accuracy"]
  np.testing.assert_allclose([x["mean_correct_prob"] for x in r["lens"]], [x["mean_correct_prob"] for x in first["lens"]], rtol=1e-5)
  assert os.path.isfile(tmp_path / "eval" / "report.md")


def test_evaluation_refuses_another_split_than_the_adapter_was_trained_on(trained, tmp_path):
  # Issue 10.5: evaluating with another seed would score triples the adapter was trained on.
  from lazarus_jax.errors import UserError

  c, workdir = trained
  c2 = tiny_config.get_config()
  c2.eval.adapter = os.path.join(workdir, "adapter")
  c2.seed = 1
  with pytest.raises(
    UserError,
    match=r"was trained against held-out \w{12} \(seed 0.*this evaluation's split is "
    r"held-out \w{12} \(seed 1",
  ):
    evaluate.run(c2, str(tmp_path))
  assert not os.path.exists(tmp_path / "eval")
  c2.seed, c2.data.n_eval_per_op = 0, 8
  with pytest.raises(UserError, match="n_eval_per_op 16.*n_eval_per_op 8"):
    evaluate.run(c2, str(tmp_path))


def test_report_says_cannot_tell_when_lens_rows_tie():
  rows = [{"row": r, "layer": r - 1 if r else None, "accuracy": 1.0, "ci_low": 0.99, "ci_high": 1.0, "n": 400} for r in range(4)]
  text = report.best_rows_sentence(rows)
  assert text.startswith("**Cannot tell**") and "4 rows" in text
  rows[2]["accuracy"], rows[2]["ci_low"] = 1.0, 0.99
  for r in (0, 1, 3):
    rows[r].update(accuracy=0.3, ci_low=0.25, ci_high=0.35)
  assert report.best_rows_sentence(rows).startswith("The lens is most accurate after block 1")


def test_report_verdict_rules():
  # Lower bound above chance -> present; vocab top-1 >= 50% -> strict.
  assert report.vocab_verdict({"ci_low": 0.3, "vocab_top1_accuracy": 0.6}, 4) == (True, True)
  assert report.vocab_verdict({"ci_low": 0.2, "vocab_top1_accuracy": 0.0}, 4) == (False, False)
  assert report.vocab_verdict({"ci_low": 0.26, "vocab_top1_accuracy": 0.1}, 4) == (True, False)


def test_cli_missing_adapter_is_one_line_and_exit_2(tmp_path):
  proc = subprocess.run(
    [sys.executable, "-m", "lazarus_jax.evaluate", "--config", "configs/tiny.py", "--workdir", str(tmp_path)],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("error: no adapter at ")
  assert not os.path.exists(tmp_path / "eval")


def test_tensorboard_holds_the_eval_scalars_and_the_run_hparams(trained):
  """Read back from <workdir>/tb's event files: evaluate's headline numbers at the adapter's step, beside
  training's curves, and the run's hyperparameters for the HParams dashboard."""
  import tb_events

  c, workdir = trained
  res = json.load(open(os.path.join(workdir, "eval", "results.json")))
  tb = os.path.join(workdir, "tb")
  got = tb_events.scalars(tb)
  cls, answers, row = res["classifier_eval"], res["answer_accuracy"], res["lens_row"]
  expect = {
    "eval/lens_accuracy_L": cls["accuracy"],
    "eval/lens_accuracy_L/ci_low": cls["ci_low"],
    "eval/lens_accuracy_L/ci_high": cls["ci_high"],
    "eval/answer_accuracy": answers["accuracy"],
    "eval/answer_accuracy/ci_high": answers["ci_high"],
    "eval_base/lens_accuracy_L": res["base"]["classifier_eval"]["accuracy"],
  }
  for fmt in res["formats"]:
    expect[f"eval/lens_accuracy_L/{fmt}"] = cls["by_format"][fmt]["accuracy"]
    expect[f"eval/answer_accuracy/{fmt}"] = answers["by_format"][fmt]["accuracy"]
    expect[f"eval/probe_accuracy_L/{fmt}"] = res["probes"]["by_format"][fmt]["layers"][row]["test_accuracy"]
  for tag, value in expect.items():
    assert got[tag] == [(6, pytest.approx(value, abs=1e-6))], tag  # once, at the adapter's training step
  assert [s for s, _ in got["train/loss"]] == [3, 6]  # training's own, in the same directory
  values, metrics = tb_events.hparams(tb)
  assert values["lora.rank"] == c.lora.rank and values["train.lr"] == pytest.approx(c.train.lr)
  assert values["model.source"] == "tiny-random" and values["lora.targets"] == "v,o"
  assert values["classifier.target_set"] == "operation" and values["train.objective"] == "dual_reward"
  assert {"eval/lens_accuracy_L", "train/loss"} <= set(metrics)
