"""Input-only baselines, fewshot counterfactual metrics, target controls and the computed-or-copied rule."""

import json
import os

import numpy as np
import pytest

from lazarus_jax import experiment, settings
from lazarus_jax.analysis import compute_or_copy, probes, stats
from lazarus_jax.configs import tiny as tiny_config
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data import prompt_formats
from lazarus_jax.errors import UserError
from lazarus_jax.models.tiny import tiny_tokenizer
from lazarus_jax.reporting import evaluate

import repo

ROOT = repo.ROOT

LABELS = ["add", "divide", "multiply", "subtract"]


def test_layer0_baseline_finds_the_position_that_carries_the_label():
  # Token 10 + label sits 3 tokens before the readout; everything else is label-independent noise tokens.
  rng = np.random.default_rng(0)
  embed = rng.normal(size=(64, 16)).astype(np.float32)
  y = np.tile(np.arange(4), 30)
  prompts = [[int(t) for t in rng.integers(20, 64, size=n)] for n in rng.integers(6, 9, size=y.size)]
  for p, lab in zip(prompts, y):
    p[-3] = 10 + int(lab)
  c = tiny_config.get_config()
  from lazarus_jax.analysis import probes

  split = probes.split_indices(120, 0.5, seed=0, stratify_labels=y)
  out = evaluate.layer0_baseline(embed, prompts, y, split, settings.parse(c))
  assert len(out["positions"]) == 8
  assert out["best"]["from_end"] == 3 and out["best"]["accuracy"] == 1.0 and out["best"]["n"] == 60
  others = [r["accuracy"] for r in out["positions"] if r["from_end"] != 3]
  assert max(others) < 0.6  # noise positions stay near chance (0.25) on held-out prompts


def _oracle_states(examples_rule):
  """A stand-in for readout_states whose lens at every row names `examples_rule(prompt)`: it follows the solved
  examples by construction, so the counterfactual metrics have known values."""

  def fake(model, prompt_ids, class_ids, batch_size, pad_id):
    tok = tiny_tokenizer()
    probs = np.zeros((len(prompt_ids), 5, 4))
    for i, ids in enumerate(prompt_ids):
      probs[i, :, LABELS.index(examples_rule(tok.decode(ids)))] = 1.0
    return {"class_probs": probs, "top1": np.zeros((len(prompt_ids), 5), np.int64), "hidden": None}

  return fake


def _reads_first_example(prompt):
  a, _, b, _, r = prompt.split("\n")[0].split(" ")
  fits = prompt_formats.fitting_operations(int(a), int(b), int(r))
  return fits[0] if fits else "multiply"


def test_trained_reader_reads_only_what_the_training_prompts_carry():
  # Training prompts name the class by a letter (q: add, z: multiply, ...). Held-out "word" prompts use letters
  # that training never showed: the trained reader falls to one guess for all (a quarter right), where a reader
  # fitted on the held-out prompts themselves would read them perfectly. Held-out "symbolic" prompts reuse the
  # training letters: it reads them all.
  tok = tiny_tokenizer()
  c = settings.parse(tiny_config.get_config())
  train_letter = dict(zip(LABELS, "qzxv"))
  unseen_letter = dict(zip(LABELS, "kwjy"))

  def ex(letter, op, i, fmt):
    return data_lib.Example(prompt=f"{letter} {i} = ", answer=" 1", operation=op, a=i, b=1, fmt=fmt)

  train = [ex(train_letter[op], op, i, "word") for op in LABELS for i in range(10, 40)]
  held = [ex(unseen_letter[op], op, i, "word") for op in LABELS for i in range(2, 8)]
  held += [ex(train_letter[op], op, i, "symbolic") for op in LABELS for i in range(2, 8)]
  out = evaluate.trained_reader(tok, train, held, LABELS, c)
  assert out["symbolic"]["accuracy"] == 1.0 and out["symbolic"]["n"] == 24
  assert out["word"]["accuracy"] <= 0.5 and out["word"]["n"] == 24 and out["word"]["n_train"] == 120
  same_split = probes.lexical_baseline(
    [data_lib.encode_prompt(tok, e.prompt) for e in held[:24]] * 2,
    np.tile([data_lib.label_index(e.operation, LABELS) for e in held[:24]], 2),
    (np.arange(24), np.arange(24, 48)),
  )
  assert same_split["accuracy"] == 1.0  # the bar the same-split baseline sets on such prompts: unbeatable


def test_counterfactual_metrics_of_a_lens_that_follows_the_examples(monkeypatch):
  c = settings.parse(tiny_config.get_config())
  s = data_lib.make_splits(formats=("fewshot",), n_eval_per_op=16, seed=0)
  targets = type("T", (), {"labels": tuple(LABELS), "token_ids": (1, 2, 3, 4)})()
  monkeypatch.setattr(evaluate, "readout_states", _oracle_states(_reads_first_example))
  tok = tiny_tokenizer()
  out = evaluate.counterfactual_metrics(None, tok, s.eval, targets, 2, c, 0.95)
  assert out["n"] == len(s.eval) == 64
  assert out["flip_rate"]["accuracy"] == 1.0 and out["stay_rate"]["accuracy"] == 0.0
  assert out["flip_rate"]["ci_low"] > 0.5
  # Shuffled results: no example fits the label, so this lens names it only through its fallback ("multiply"
  # when the first example fits nothing): it falls from 100% to the share of those fallbacks.
  sh = prompt_formats.shuffled_examples(s.eval, c.seed)
  hits = [_reads_first_example(e.prompt) == e.operation for e in sh]
  assert all(e.operation == "multiply" for e, h in zip(sh, hits) if h)
  assert out["shuffled"]["n"] == len(sh) > 32 and out["shuffled"]["accuracy"] == np.mean(hits) < 0.3
  # A lens that reads only the query's symbol (here: always "multiply") never flips unless shown multiply.
  monkeypatch.setattr(evaluate, "readout_states", _oracle_states(lambda p: "multiply"))
  out = evaluate.counterfactual_metrics(None, tok, s.eval, targets, 2, c, 0.95)
  shown = out["flip_rate"]["by_shown_operation"]
  assert shown["multiply"]["accuracy"] == 1.0 and shown["add"]["accuracy"] == 0.0
  assert out["flip_rate"]["ci_high"] < 0.7


def _res(lens_by_fmt, baseline_by_fmt, flip_low=None):
  """A minimal evaluate_model dict: lens (accuracy, ci_low) per format, bag-of-tokens ci_high per format."""
  by_format, probes = {}, {}
  for fmt, (acc, low) in lens_by_fmt.items():
    by_format[fmt] = {
      "accuracy": acc,
      "ci_low": low,
      "ci_high": min(1.0, acc + 0.05),
      "n": 100,
      "confusion": {"labels": LABELS, "matrix": np.diag([30, 20, 30, 20]).tolist()},
    }
    if fmt in baseline_by_fmt:
      b = baseline_by_fmt[fmt]
      probes[fmt] = {
        "lexical_baseline": {"accuracy": b - 0.05, "ci_low": b - 0.1, "ci_high": b, "n": 50},
        "layers": [{"test_accuracy": 0.5, "test_ci": [0.4, 0.6], "n_test": 50}] * 5,
      }
  cf = None if flip_low is None else {"flip_rate": {"ci_low": flip_low}}
  return {"classifier_eval": {"by_format": by_format, "row": 3}, "probes": {"by_format": probes}, "counterfactuals": cf}


@pytest.mark.parametrize(
  "lens,base,flip,expected",
  [
    ({"fewshot": (0.9, 0.85), "symbolic": (1.0, 0.97)}, {"fewshot": 0.5, "symbolic": 1.0}, 0.8, "computed"),
    ({"fewshot": (0.9, 0.85), "symbolic": (1.0, 0.97)}, {"fewshot": 0.5, "symbolic": 1.0}, 0.3, "cannot tell"),
    ({"fewshot": (0.5, 0.4), "symbolic": (1.0, 0.97)}, {"fewshot": 0.6, "symbolic": 1.0}, 0.2, "copied"),
    ({"fewshot": (0.25, 0.2), "symbolic": (0.25, 0.2)}, {"fewshot": 0.6, "symbolic": 1.0}, 0.2, "not readable"),
    ({"symbolic": (1.0, 0.97)}, {"symbolic": 1.0}, None, "cannot tell"),
    ({"fewshot": (0.5, 0.4), "word": (0.9, 0.85)}, {"fewshot": 0.6, "word": 0.7}, 0.2, "cannot tell"),
  ],
)
def test_verdict_rule(lens, base, flip, expected):
  v = compute_or_copy.verdict(_res(lens, base, flip))
  assert v["verdict"] == expected, v["reason"]
  assert v["rule"] == compute_or_copy.RULE


def test_target_sets_resolve_and_answer_labels_are_first_answer_tokens():
  tok = tiny_tokenizer()
  c = tiny_config.get_config()
  s = data_lib.make_splits(formats=("fewshot", "word"), n_eval_per_op=16, seed=0, eval_formats=("fewshot", "word"))
  prompts = sorted({e.prompt for e in s.train + s.eval})
  # The tiny tokenizer spells "river" letter by letter, and word prompts hold those letters: symbolic prompts.
  symbolic = sorted({e.prompt for e in data_lib.make_splits(n_eval_per_op=16).eval})
  for name, words, ps in (
    ("arbitrary", {"multiply": "river", "divide": "lemon"}, symbolic),
    ("shuffled", {"multiply": "add", "add": "divide"}, prompts),
  ):
    c.classifier.target_set = name
    t = experiment.class_targets(settings.parse(c).classifier, tok, ps)
    for label, word in words.items():
      assert t.words[t.index(label)] == word
    assert experiment.example_labels(settings.parse(c).classifier, tok, s.eval[:3]) == [e.operation for e in s.eval[:3]]
  c.classifier.target_set = "answer"
  answer = settings.parse(c).classifier
  t = experiment.class_targets(answer, tok, prompts, examples=s.train + s.eval)
  assert set(t.labels) == set("0123456789")  # the tiny tokenizer splits digits
  labels = experiment.example_labels(answer, tok, s.eval)
  assert labels == [e.answer[0] for e in s.eval]
  c.classifier.target_set = "nonsense"
  with pytest.raises(UserError, match="target_set"):
    settings.parse(c)


@pytest.fixture(scope="module")
def fewshot_base_eval(tmp_path_factory):
  """The base tiny model evaluated on fewshot and the held-out operator spellings (no training needed)."""
  workdir = str(tmp_path_factory.mktemp("fewshot_eval"))
  c = tiny_config.get_config()
  c.data.format = "fewshot"
  c.data.eval_format = "fewshot,symbolic_alt"
  c.eval.adapter = "none"
  c.eval.max_examples_per_op = 8
  c.eval.probe_steps = 30
  c.eval.generate = False
  return evaluate.run(c, workdir), workdir


def test_fewshot_evaluation_carries_baselines_counterfactuals_transfer_and_verdict(fewshot_base_eval):
  r, workdir = fewshot_base_eval
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    assert json.load(f)["transfer"] == r["transfer"]
  assert r["transfer"]["train_formats"] == ["fewshot"] and r["transfer"]["eval_formats"] == ["fewshot", "symbolic_alt"]
  assert r["n_eval"] == {"fewshot": 32, "symbolic_alt": 32}  # 8 triples x 4 ops; 8 x 2 ops x 2 spellings
  for fmt in ("fewshot", "symbolic_alt"):
    pr = r["probes"]["by_format"][fmt]
    assert pr["layer0_positions"]["best"]["n"] == pr["lexical_baseline"]["n"]  # the same held-out half
    reader = pr["bag_of_tokens_from_training"]  # fitted on the training prompts, tested on the whole held-out set
    assert reader["n"] == r["n_eval"][fmt] and reader["n_train"] > 100 and reader["trained_formats"] == ["fewshot"]
    row = r["compute_or_copy"]["formats"][fmt]
    assert row["bag_of_tokens_from_training"]["accuracy"] == reader["accuracy"]
    d = row["lens_minus_trained_reader"]  # paired on the same prompts: the lens's and the reader's outcomes
    lens_bits = stats.unbits(r["per_example"]["lens_correct"][r["lens_row"]])[np.asarray(r["per_example"]["format"]) == fmt]
    reader_bits = stats.unbits(reader["correct"])
    assert d["n"] == reader["n"] == len(reader_bits) and reader_bits.mean() == pytest.approx(reader["accuracy"])
    assert d["mean_diff"] == pytest.approx(lens_bits.mean() - reader_bits.mean())
    assert row["beats_trained_reader"] == (d["ci_low"] > 0)
  cf = r["counterfactuals"]
  assert cf["n"] == 32 and cf["flip_rate"]["n"] == 32 and cf["flip_rate"]["n_correct"] + cf["stay_rate"]["n_correct"] <= 32
  cc = r["compute_or_copy"]
  assert set(cc["formats"]) == {"fewshot", "symbolic_alt"} and cc["verdict"] in ("computed", "copied", "not readable", "cannot tell")
  text = open(os.path.join(workdir, "eval", "report.md")).read()
  for needle in (
    "## Computed or copied?",
    "Counterfactuals (base, fewshot",
    "Verdict (base)",
    "| base | fewshot |",
    "| base | symbolic_alt |",
    "Trained reader | Beats it |",
  ):
    assert needle in text, needle


def test_sweep_transfer_rows_and_tables_from_real_results(fewshot_base_eval):
  from lazarus_jax.reporting import sweep, sweep_report

  r, _ = fewshot_base_eval
  rows = []
  for seed in (0, 1):  # the same results twice stand in for two seeds
    rows += sweep.transfer_rows(sweep.Arm("base", None, "fewshot", None, seed), r, [0.25, 0.55])
  assert {(x["eval_format"], x["layer"]) for x in rows} == {(f, lay) for f in ("fewshot", "symbolic_alt") for lay in (1, 2)}
  at_l = [x for x in rows if x["layer"] == r["classifier_layer"]]
  few = next(x for x in at_l if x["eval_format"] == "fewshot")
  assert few["flip_rate"] == r["counterfactuals"]["flip_rate"]["accuracy"] and few["verdict"] == r["compute_or_copy"]["verdict"]
  assert few["lens_accuracy"] == r["classifier_eval"]["by_format"]["fewshot"]["accuracy"]
  assert few["bag_of_tokens"] == r["probes"]["by_format"]["fewshot"]["lexical_baseline"]["accuracy"]
  assert few["trained_reader"] == r["probes"]["by_format"]["fewshot"]["bag_of_tokens_from_training"]["accuracy"]
  assert all(x["verdict"] is None and x["flip_rate"] is None for x in rows if x["layer"] != r["classifier_layer"])
  summary = sweep.summarize_transfer(rows)
  cell = next(x for x in summary if x["eval_format"] == "fewshot" and x["layer"] == 2)
  assert cell["n_seeds"] == 2 and cell["verdicts"] == [few["verdict"]] * 2
  assert cell["lens_accuracy"]["mean"] == pytest.approx(few["lens_accuracy"])
  md = "\n".join(sweep_report.transfer_markdown(summary, "95%"))
  assert "## Transfer matrix" in md and "| base | fewshot | 0.55 |" in md and "## Computed or copied?" in md
  assert cell["trained_reader"] == pytest.approx(few["trained_reader"]) and f"{100 * few['trained_reader']:.1f}% |" in md


def test_default_eval_formats():
  c = tiny_config.get_config()
  assert settings.eval_formats(c) == ["symbolic"]  # round-1 runs evaluate what they train on, as before
  c.data.format = "fewshot"
  assert settings.eval_formats(c) == list(data_lib.EVAL_FORMATS)  # a cue-free run reports its transfer row
  c.data.eval_format = "fewshot,symbolic_alt"
  assert settings.eval_formats(c) == ["fewshot", "symbolic_alt"]
  c.data.eval_format = "symbolic_alt,nope"
  with pytest.raises(UserError, match="nope"):
    settings.parse(c)


def test_batches_are_balanced_as_before_target_sets_existed():
  # The ids train balances by equal the operation's index among the default class targets (the label order every
  # run before target sets used), so a seed draws the same batches; and they do not depend on the target set.
  c = tiny_config.get_config()
  tok = tiny_tokenizer()
  s = data_lib.make_splits(n_eval_per_op=16)
  ops = [e.operation for e in s.train]
  labels = experiment.class_targets(settings.parse(c).classifier, tok, []).labels
  assert list(experiment.balance_ids(ops)) == [data_lib.label_index(op, labels) for op in ops]
  np.testing.assert_array_equal(
    data_lib.batch_indices(len(ops), 8, 5, 0, labels=experiment.balance_ids(ops)),
    data_lib.batch_indices(len(ops), 8, 5, 0, labels=[data_lib.label_index(op, labels) for op in ops]),
  )
