"""Causal interventions on the residual stream at the readout position: is the classifier used by the answer?

One jitted forward (the KV-cached greedy decoding of `generate.py`, whose prefill runs `model.decoder_block`, the
training block) carries a hook on the residual stream. An `Edit` acts on the readout column (each prompt's last
token, DESIGN.md §2) at chosen residual rows (row 0 = embeddings, row r = after block r-1; the classifier layer L is
row L+1). In this order, at each selected row:
  1. ablation: h <- h - U U^T h, U [D, k] with orthonormal columns (k = 0 columns or U = 0: nothing);
  2. patching: h <- replace, where `patch` is set (the residual of another prompt at the same row);
  3. steering: h <- h + add.
Only the prefill is edited; the decode steps see the edited prompt through the KV cache, so the measured answer is
the model's own greedy continuation. An all-zero edit leaves every number as the plain forward computes it.

Directions (`class_directions`): the lens reads class c's logit as (g * W_U[c]) . h / rms(h), with g the final
RMSNorm weight and W_U the unembedding (tied embedding for SmolLM2), so d_c = g * W_U[c] is the direction in the
residual stream that the logit lens reads for the class word. Ablating span{d_c} sets every class word's lens logit
at that row to zero (the norm's scale does not change a zero).

Experiments (host side, numpy results that `evaluate` writes into results.json under `mechanism`):
  - `ablation`: class-word directions vs the same number of random directions (Gaussian; and, a control of the same
    kind, the lens directions of random vocabulary tokens), several draws each, per row;
  - `steering`: h_L += alpha * |h_L| * (d_t - d_s) / |d_t - d_s| for the pair source op s -> target op t
    (`STEER_TO`), alpha in units of each prompt's own readout norm at that row;
  - `patching`: the readout residual of the same operands under operation A (`STEER_TO`'s map, A = t) put into the
    prompt of operation B, at each row; the fraction of answers that follow A is the layer x effect curve.
Counterpart prompts (`counterpart_example`): symbolic / semantic render the same operands with A's symbol or word;
fewshot keeps the query and its symbol and shows solved examples of A (from A's training pairs); word uses A's
template of the same split side and index (prompt_formats.counterpart).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lazarus_jax.analysis.stats import accuracy_summary, bits, bootstrap_mean
from lazarus_jax.data import arithmetic as data_lib
from lazarus_jax.data import prompt_formats
from lazarus_jax.models.generate import greedy_generate, parse_integer

# Each source operation's counterpart for steering and patching: every (a, b) of the source has an integer answer
# under the target (a division's operands give an integer product; a - b + ... all integers).
STEER_TO = {"multiply": "add", "add": "multiply", "subtract": "add", "divide": "multiply"}


# ---- the edit (traced arrays: one compile for every edit of the same shapes) ---------------------------------


def make_edit(n_rows: int, n_examples: int, dim: int, rows: Sequence[int] = (), basis=None, add=None, replace=None, patch=None):
  """An edit as generate's (shared, per_example) pair. rows: which residual rows to edit (0..n_rows-1);
  basis [D, k] orthonormal columns to project out (default: none, k = 1 zero column, so shapes stay the same);
  add [N, D]; replace [N, D] with patch [N] bool. Missing parts are zeros: the identity edit."""
  mask = np.zeros((n_rows,), bool)
  mask[list(rows)] = True
  shared = {"rows": mask, "basis": np.zeros((dim, 1), np.float32) if basis is None else np.asarray(basis, np.float32)}
  per_example = {
    "add": np.zeros((n_examples, dim), np.float32) if add is None else np.asarray(add, np.float32),
    "replace": np.zeros((n_examples, dim), np.float32) if replace is None else np.asarray(replace, np.float32),
    "patch": np.zeros((n_examples,), bool) if patch is None else np.asarray(patch, bool),
  }
  return shared, per_example


def apply_edit(edit, row, h):
  """The hook: edits h [B, T, D]'s last column (the readout; generation left-pads) when `rows[row]` is set."""
  shared, ex = edit
  hr = h[:, -1]
  u = shared["basis"].astype(hr.dtype)
  new = hr - (hr @ u) @ u.T
  new = jnp.where(ex["patch"][:, None], ex["replace"].astype(hr.dtype), new) + ex["add"].astype(hr.dtype)
  return h.at[:, -1].set(jnp.where(shared["rows"][row], new, hr))


@dataclasses.dataclass
class EditedRun:
  ids: list[list[int]]  # greedy continuations (EOS excluded)
  texts: list[str]
  readout: np.ndarray  # [n_layers + 1, N, D] the edited residual rows at the readout
  logits: np.ndarray  # [N, V] final-layer logits at the readout (the first answer token's distribution)


def run_edited(model, tok, prompt_ids: Sequence[Sequence[int]], edit=None, max_new_tokens: int = 8, max_batch: int = 32) -> EditedRun:
  """The model's greedy decoding of each prompt with `edit` (None = the identity edit) applied in the prefill."""
  n_rows, dim = model.cfg.num_layers + 1, model.cfg.hidden_size
  if edit is None:
    edit = make_edit(n_rows, len(prompt_ids), dim)
  # Prompt bucket 8 (generation's default is 16): the prefill is most of an edited run's time, and a symbolic
  # prompt has ~8 tokens; the bucket only pads (left, masked), it changes no number.
  ids, readout, logits = greedy_generate(
    model,
    [list(p) for p in prompt_ids],
    max_new_tokens,
    tok.eos_id,
    tok.pad_id,
    max_batch=max_batch,
    bucket=8,
    edit=edit,
    edit_fn=apply_edit,
  )
  return EditedRun(ids=ids, texts=[tok.decode(i) for i in ids], readout=readout, logits=logits)


# ---- directions ---------------------------------------------------------------------------------------------


def class_directions(model, token_ids: Sequence[int]) -> np.ndarray:
  """[K, D] float64: d_c = g * W_U[c], what the logit lens reads for each class token (module docstring)."""
  unembed = np.asarray(jax.device_get(model.unembed_matrix()), np.float64)
  g = np.asarray(jax.device_get(model.final_norm[...]), np.float64)
  return unembed[np.asarray(token_ids)] * g[None, :]


def orthonormal_basis(vectors: np.ndarray) -> np.ndarray:
  """[D, k] orthonormal columns spanning the rows of `vectors` [k, D] (QR in float64)."""
  q, r = np.linalg.qr(np.asarray(vectors, np.float64).T)
  if np.min(np.abs(np.diag(r))) < 1e-10 * np.max(np.abs(np.diag(r))):
    raise ValueError("the directions are linearly dependent")
  return q


def random_basis(dim: int, k: int, seed: int) -> np.ndarray:
  """[D, k] orthonormal columns spanning k Gaussian random directions."""
  rng = np.random.default_rng([seed, 4111])
  return orthonormal_basis(rng.standard_normal((k, dim)))


# ---- scoring -------------------------------------------------------------------------------------------------


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  x = np.asarray(logits, np.float64)
  x = x - x.max(axis=-1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
  """KL(softmax(ref) || softmax(logits)) per row, in nats (float64)."""
  lp, lq = _log_softmax(ref_logits), _log_softmax(logits)
  return np.sum(np.exp(lp) * (lp - lq), axis=-1)


def answers_match(texts: Sequence[str], values: Sequence[int]) -> np.ndarray:
  """Per prompt: the continuation starts with that integer (generate.exact_match's rule)."""
  return np.asarray([parse_integer(t) == v for t, v in zip(texts, values)], bool)


def _summary(correct: np.ndarray) -> dict:
  return accuracy_summary(np.asarray(correct, bool))


def first_answer_tokens(tok, examples, answers: Sequence[int]) -> np.ndarray:
  """The first token of each answer as the joint encoding of prompt + answer splits it."""
  return np.asarray(
    [data_lib.encode_example(tok, e.prompt, str(v), append_eos=False).answer_ids[0] for e, v in zip(examples, answers)]
  )


def kl_interval(kl_per_prompt: np.ndarray) -> dict:
  """{mean, ci_low, ci_high, se, method, n}: the mean KL over prompts with a seeded bootstrap interval."""
  out = bootstrap_mean([np.asarray(kl_per_prompt, np.float64)])
  out.pop("n_groups", None)
  return out


def outcome(run: EditedRun, clean: EditedRun, examples, first_ids: np.ndarray, answers: np.ndarray) -> dict:
  """What an edit did to the answers: exact-match accuracy, first-token accuracy (the argmax of the final logits at
  the readout), mean p(first answer token), mean KL(clean || edited) of the final distribution at the readout, and
  the fraction of answers that changed."""
  lp = _log_softmax(run.logits)
  n = np.arange(len(examples))
  kl = kl_divergence(clean.logits, run.logits)
  return {
    "answer_accuracy": _summary(answers_match(run.texts, answers)),
    "first_token_accuracy": _summary(np.argmax(run.logits, axis=-1) == first_ids),
    "mean_p_first_token": float(np.mean(np.exp(lp[n, first_ids]))),
    "mean_kl_from_clean": float(np.mean(kl)),
    "kl_from_clean": kl_interval(kl),  # the same mean with its bootstrap interval over prompts
    "changed_answer_fraction": float(np.mean([a != b for a, b in zip(run.ids, clean.ids)])),
  }


# ---- experiments ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
  """The prompts and their clean run, shared by every experiment on one model."""

  examples: list
  prompt_ids: list[list[int]]
  answers: np.ndarray  # the correct integer per prompt
  first_ids: np.ndarray  # first token of the correct answer
  clean: EditedRun
  max_new_tokens: int  # every edited run decodes as far as the clean one
  counterparts: list  # per prompt, its counterpart (`counterpart_example`): the same operands under STEER_TO's op


def counterpart_example(e, train_pairs_by_op: dict | None = None, seed: int = 0):
  """Example `e` with the same operands under STEER_TO[e.operation] (an integer answer for every generated pair), in
  e's format. fewshot needs `train_pairs_by_op` (its solved examples come from training pairs); `seed` picks them."""
  op = STEER_TO[e.operation]
  if e.fmt in ("fewshot", "word"):
    return prompt_formats.counterpart(e, op, train_pairs_by_op, seed)
  return data_lib.make_example(e.a, op, e.b, e.fmt)


def train_pairs_by_operation(train_examples) -> dict:
  """{operation: its distinct (a, b) pairs, first-seen order} of training examples (every format renders the same
  training pairs, so any format's examples give them)."""
  out: dict = {}
  for e in train_examples:
    if e.a is not None and e.b is not None:
      out.setdefault(e.operation, {})[(e.a, e.b)] = None
  return {op: list(pairs) for op, pairs in out.items()}


def prepare(model, tok, examples, max_new_tokens: int = 8, train_pairs_by_op: dict | None = None, seed: int = 0) -> Prepared:
  """The clean greedy run of `examples` and their counterparts (fewshot ones need `train_pairs_by_op`)."""
  examples = list(examples)
  counterparts = [counterpart_example(e, train_pairs_by_op, seed) for e in examples]
  prompt_ids = [data_lib.encode_prompt(tok, e.prompt) for e in examples]
  answers = np.asarray([int(e.answer) for e in examples])
  clean = run_edited(model, tok, prompt_ids, None, max_new_tokens)
  return Prepared(examples, prompt_ids, answers, first_answer_tokens(tok, examples, answers), clean, max_new_tokens, counterparts)


def ablation(model, tok, prep: Prepared, class_ids: Sequence[int], rows: Sequence[int], n_random: int = 3, seed: int = 0) -> dict:
  """Projects the class-word lens directions (and, as the control, as many random directions, `n_random` draws) out
  of the readout residual at each row in `rows`, one row at a time. Per row: the outcome of each, and the mean
  fraction of the residual's squared norm each removed."""
  max_new_tokens = prep.max_new_tokens
  n_rows, dim, n = model.cfg.num_layers + 1, model.cfg.hidden_size, len(prep.examples)
  class_basis = orthonormal_basis(class_directions(model, class_ids))
  controls = {
    "random": [random_basis(dim, len(class_ids), seed + i) for i in range(n_random)],
    "random_tokens": [
      orthonormal_basis(class_directions(model, ids))
      for ids in random_token_ids(model.cfg.vocab_size, len(class_ids), class_ids, seed, n_random)
    ],
  }
  clean = prep.clean
  out = {
    "rows": [],
    "k": len(class_ids),
    "n_random": n_random,
    "n": n,
    "clean": outcome(clean, clean, prep.examples, prep.first_ids, prep.answers),
  }
  # Per prompt, per row: the answer is still correct under the class ablation and under each control's first draw.
  per = {"rows": [int(r) for r in rows], "class": []} | {name: [] for name in controls}
  for row in rows:
    h = clean.readout[row].astype(np.float64)

    def removed(basis):
      return float(np.mean(np.sum((h @ basis) ** 2, axis=-1) / np.sum(h * h, axis=-1)))

    entry = {"row": int(row), "layer": int(row) - 1 if row > 0 else None}
    run = run_edited(model, tok, prep.prompt_ids, make_edit(n_rows, n, dim, [row], basis=class_basis), max_new_tokens)
    kl_class = kl_divergence(clean.logits, run.logits)
    per["class"].append(bits(answers_match(run.texts, prep.answers)))
    entry["class"] = {
      **outcome(run, clean, prep.examples, prep.first_ids, prep.answers),
      "norm_fraction_removed": removed(class_basis),
    }
    for name, bases in controls.items():
      draws, kls = [], []
      for j, basis in enumerate(bases):
        run = run_edited(model, tok, prep.prompt_ids, make_edit(n_rows, n, dim, [row], basis=basis), max_new_tokens)
        if j == 0:
          per[name].append(bits(answers_match(run.texts, prep.answers)))
        draws.append({**outcome(run, clean, prep.examples, prep.first_ids, prep.answers), "norm_fraction_removed": removed(basis)})
        kls.append(kl_divergence(clean.logits, run.logits))
      entry[name] = draws
      entry[f"{name}_mean"] = {k: float(np.mean([_scalar(d[k]) for d in draws])) for k in draws[0] if k != "kl_from_clean"}
      # Paired by prompt: the class directions' KL minus the control's (mean over its draws), with its interval.
      entry[f"kl_class_minus_{name}"] = kl_interval(kl_class - np.mean(kls, axis=0))
    out["rows"].append(entry)
  out["per_example"] = per
  return out


def random_token_ids(vocab_size: int, k: int, exclude: Sequence[int], seed: int, draws: int) -> list[np.ndarray]:
  """`draws` sets of k distinct token ids, none of them in `exclude` (seeded): the control whose lens directions
  are of the same kind as the class words' (unembedding rows through the final norm)."""
  rng = np.random.default_rng([seed, 4133])
  pool = np.setdiff1d(np.arange(vocab_size), np.asarray(exclude))
  return [rng.choice(pool, size=k, replace=False) for _ in range(draws)]


def _scalar(v):
  return v["accuracy"] if isinstance(v, dict) else v


def counterpart_mask(prep: Prepared) -> np.ndarray:
  """[N] bool: the prompts steering and patching use (their counterpart's answer differs from their own)."""
  mask = np.zeros((len(prep.examples),), bool)
  mask[_counterpart(prep)[0]] = True
  return mask


def _counterpart(prep: Prepared):
  """Indices of prompts whose counterpart answer (STEER_TO) differs from their own, and those answers."""
  keep, other = [], []
  for i, cp in enumerate(prep.counterparts):
    value = int(cp.answer)
    if value != prep.answers[i]:
      keep.append(i)
      other.append(value)
  return np.asarray(keep, int), np.asarray(other)


def steering(
  model, tok, prep: Prepared, class_ids: Sequence[int], labels: Sequence[str], row: int, alphas: Sequence[float], seed: int = 0
) -> dict:
  """Adds alpha * |h| * unit(d_target - d_source) at `row` (source = the prompt's operation, target = STEER_TO's).
  Per alpha: how often the answer becomes the target operation's answer, stays correct, and the same for a random
  unit direction of the same size (the control)."""
  max_new_tokens = prep.max_new_tokens
  n_rows, dim = model.cfg.num_layers + 1, model.cfg.hidden_size
  idx, target_answers = _counterpart(prep)
  dirs = class_directions(model, class_ids)
  rng = np.random.default_rng([seed, 4127])
  norms = np.linalg.norm(prep.clean.readout[row, idx].astype(np.float64), axis=-1)
  steer, rand = np.zeros((len(idx), dim)), np.zeros((len(idx), dim))
  for j, i in enumerate(idx):
    op = prep.examples[i].operation
    d = dirs[data_lib.label_index(STEER_TO[op], labels)] - dirs[data_lib.label_index(op, labels)]
    steer[j] = d / np.linalg.norm(d)
    r = rng.standard_normal(dim)
    rand[j] = r / np.linalg.norm(r)
  prompts = [prep.prompt_ids[i] for i in idx]
  examples = [prep.examples[i] for i in idx]
  answers = prep.answers[idx]
  # The subset's own clean run (the same batches as the edited runs: an all-zero edit reproduces it bit for bit).
  clean_sub = run_edited(model, tok, prompts, None, max_new_tokens)
  first_ids, target_first = prep.first_ids[idx], first_answer_tokens(tok, examples, target_answers)
  # What the model itself answers to the target operation's prompt (same operands): "becomes the target's answer"
  # is also scored against that, since a model that answers few prompts right rarely produces the true one.
  target_run = counterpart_run(model, tok, [prep.counterparts[i] for i in idx], max_new_tokens)
  target_outputs = [parse_integer(t) for t in target_run.texts]
  out = {
    "row": int(row),
    "layer": int(row) - 1 if row > 0 else None,
    "pairs": dict(STEER_TO),
    "n": len(idx),
    "alpha_unit": "each prompt's readout residual norm at the row",
    "target_prompt_accuracy": _summary(answers_match(target_run.texts, target_answers)),
    "alphas": [],
  }
  # Per alpha, per prompt of the subset (`counterpart_mask`'s prompts, in order): the answer became the target's.
  per = {"alphas": [float(a) for a in alphas]} | {
    k: [] for k in ("class_target_answer", "class_target_output", "class_target_first_token", "random_target_output")
  }
  for alpha in alphas:
    entry = {"alpha": float(alpha)}
    for name, vec in (("class", steer), ("random", rand)):
      add = alpha * norms[:, None] * vec
      run = run_edited(model, tok, prompts, make_edit(n_rows, len(idx), dim, [row], add=add), max_new_tokens)
      res = outcome(run, clean_sub, examples, first_ids, answers)
      res["target_answer"] = _summary(answers_match(run.texts, target_answers))
      first_is_target = np.argmax(run.logits, axis=-1) == target_first
      res["target_first_token"] = _summary(first_is_target)
      same = _same_output(run.texts, target_outputs, clean_sub.texts)
      res["target_output"] = _summary(same)
      entry[name] = res
      if name == "class":
        per["class_target_answer"].append(bits(answers_match(run.texts, target_answers)))
        per["class_target_first_token"].append(bits(first_is_target))
      per[f"{name}_target_output"].append(bits(same))
    out["alphas"].append(entry)
  out["per_example"] = per
  return out


def counterpart_run(model, tok, counterparts, max_new_tokens: int) -> EditedRun:
  """The clean run of counterpart prompts (`Prepared.counterparts`: the same operands under STEER_TO's operation)."""
  return run_edited(model, tok, [data_lib.encode_prompt(tok, e.prompt) for e in counterparts], None, max_new_tokens)


def _same_output(texts, reference_outputs, clean_texts) -> np.ndarray:
  """The edited output's integer equals the reference run's integer, and differs from the unedited output's (so a
  prompt whose two outputs agreed anyway does not count as following)."""
  return np.asarray(
    [r is not None and parse_integer(t) == r and parse_integer(c) != r for t, r, c in zip(texts, reference_outputs, clean_texts)], bool
  )


def patching(model, tok, prep: Prepared, rows: Sequence[int]) -> dict:
  """Puts the readout residual of the counterpart prompt (same operands, operation A = STEER_TO[B]) into prompt B's
  readout at each row, one row at a time. Per row: the fraction of answers that follow A (A's true answer, and the
  model's own output on A's prompt where it differs from its output on B's), that stay B's, and first-token rates
  (A's answer's first token; the model's own first token on A's prompt)."""
  max_new_tokens = prep.max_new_tokens
  n_rows, dim = model.cfg.num_layers + 1, model.cfg.hidden_size
  idx, source_answers = _counterpart(prep)
  examples = [prep.examples[i] for i in idx]
  source_run = counterpart_run(model, tok, [prep.counterparts[i] for i in idx], max_new_tokens)
  source_outputs = [parse_integer(t) for t in source_run.texts]
  source_top = np.argmax(source_run.logits, axis=-1)
  prompts = [prep.prompt_ids[i] for i in idx]
  answers = prep.answers[idx]
  first_ids, source_first = prep.first_ids[idx], first_answer_tokens(tok, examples, source_answers)
  # The subset's own clean run (the same batches as the edited runs: an all-zero edit reproduces it bit for bit).
  clean_sub = run_edited(model, tok, prompts, None, max_new_tokens)
  out = {
    "pairs": [f"{STEER_TO[op]} into {op}" for op in data_lib.OPERATIONS],
    "n": len(idx),
    "source_accuracy": _summary(answers_match(source_run.texts, source_answers)),
    "rows": [],
  }
  patch = np.ones((len(idx),), bool)
  # Per row, per prompt of the subset (`counterpart_mask`'s prompts, in order): the answer followed the source.
  per = {"rows": [int(r) for r in rows], "follows_source": [], "follows_source_output": [], "source_output_first_token": []}
  for row in rows:
    edit = make_edit(n_rows, len(idx), dim, [row], replace=source_run.readout[row], patch=patch)
    run = run_edited(model, tok, prompts, edit, max_new_tokens)
    res = outcome(run, clean_sub, examples, first_ids, answers)
    follows, follows_output = answers_match(run.texts, source_answers), _same_output(run.texts, source_outputs, clean_sub.texts)
    res["follows_source"] = _summary(follows)
    res["source_first_token"] = _summary(np.argmax(run.logits, axis=-1) == source_first)
    res["follows_source_output"] = _summary(follows_output)
    first_is_source = np.argmax(run.logits, axis=-1) == source_top
    res["source_output_first_token"] = _summary(first_is_source)
    per["follows_source"].append(bits(follows))
    per["follows_source_output"].append(bits(follows_output))
    per["source_output_first_token"].append(bits(first_is_source))
    out["rows"].append({"row": int(row), "layer": int(row) - 1 if row > 0 else None, **res})
  out["per_example"] = per
  return out
