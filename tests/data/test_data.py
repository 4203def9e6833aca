"""Data: generator ranges, disjoint splits, JSONL errors, the one encode function, shifted batches, resume order."""

import collections
import json
import string

import numpy as np
import pytest
import tokenizers

from lazarus_jax.data import arithmetic as data
from lazarus_jax.errors import UserError
from lazarus_jax.models.tokenizer import Tokenizer

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def char_tokenizer(merges=(), add_bos=True) -> Tokenizer:
  """One token per printable character plus the given merges; no pre-tokenizer, so merges may cross spaces."""
  vocab = {t: i for i, t in enumerate(SPECIALS)}
  for ch in string.printable:
    vocab.setdefault(ch, len(vocab))
  for left, right in merges:
    vocab.setdefault(left + right, len(vocab))
  backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=list(merges), unk_token="<unk>"))
  backend.add_special_tokens(SPECIALS)
  backend.decoder = tokenizers.decoders.Fuse()  # decode by concatenation, as byte-level decoders do
  return Tokenizer(backend=backend, bos_id=vocab["<s>"], eos_id=vocab["</s>"], pad_id=vocab["<pad>"], add_bos=add_bos)


@pytest.fixture(scope="module")
def tok():
  # A few multi-character tokens, like a real BPE, that never cross a prompt/answer boundary.
  return char_tokenizer(merges=[("W", "h"), ("Wh", "a"), ("Wha", "t"), (" ", "*"), ("=", " ")])


@pytest.fixture(scope="module")
def splits():
  return data.make_splits(["symbolic", "semantic"], n_eval_per_op=64, seed=0)


# --- generator and splits ----------------------------------------------------------------------------------


def test_ranges_are_the_seeds():
  assert len(data.all_pairs("multiply")) == len(data.all_pairs("add")) == 2500
  assert all(1 <= a <= 50 and 1 <= b <= 50 for a, b in data.all_pairs("add"))
  sub = data.all_pairs("subtract")
  assert len(sub) == sum(range(10, 101))
  assert all(10 <= a <= 100 and 1 <= b <= a for a, b in sub)
  div = data.all_pairs("divide")
  assert len(set(div)) == 144
  assert all(1 <= b <= 12 and a % b == 0 and 1 <= a // b <= 12 for a, b in div)


def test_formats_and_answers():
  sym = data.make_example(7, "multiply", 8, "symbolic")
  assert (sym.prompt, sym.answer) == ("7 * 8 = ", "56")
  sem = data.make_example(48, "divide", 6, "semantic")
  assert (sem.prompt, sem.answer) == ("What is 48 divided by 6? ", "8")
  assert data.make_example(50, "subtract", 23, "semantic").prompt == "What is 50 minus 23? "
  assert data.make_example(23, "add", 45, "semantic").prompt == "What is 23 plus 45? "
  with pytest.raises(UserError, match="format"):
    data.make_example(1, "add", 2, "latex")


def test_every_answer_is_right(splits):
  for ex in splits.train + splits.eval:
    assert int(ex.answer.strip()) == data.compute(ex.a, ex.operation, ex.b)
    if ex.operation == "divide":
      assert ex.a == ex.b * int(ex.answer)


def test_train_and_eval_share_no_triple(splits):
  train = {ex.triple for ex in splits.train}
  held = {ex.triple for ex in splits.eval}
  assert not train & held
  # Every held-out triple appears in every format; eval sizes per op and format follow the defaults' rule.
  counts = collections.Counter((ex.operation, ex.fmt) for ex in splits.eval)
  for op in data.OPERATIONS:
    for fmt in ("symbolic", "semantic"):
      assert counts[op, fmt] == 64
  by_format = {fmt: {ex.triple for ex in splits.eval if ex.fmt == fmt} for fmt in ("symbolic", "semantic")}
  assert by_format["symbolic"] == by_format["semantic"]
  # Train + eval cover each operation's triples exactly.
  for op in data.OPERATIONS:
    covered = {(a, b) for a, o, b in train | held if o == op}
    assert covered == set(data.all_pairs(op))


def test_default_sizes_keep_division_training_data():
  s = data.make_splits(["symbolic"], seed=0)
  counts = collections.Counter(ex.operation for ex in s.eval)
  assert counts == {"multiply": 200, "add": 200, "subtract": 200, "divide": 72}
  assert collections.Counter(ex.operation for ex in s.train)["divide"] == 72


def test_seed_prompts_in_eval_never_in_train(splits):
  prompts = {ex.prompt for ex in splits.seed_prompts}
  assert len(splits.seed_prompts) == 16
  assert "7 * 8 = " in prompts and "What is 81 divided by 9? " in prompts
  assert set(splits.seed_prompts) <= set(splits.eval)
  train_prompts = {ex.prompt for ex in splits.train}
  assert not prompts & train_prompts
  assert not {ex.triple for ex in splits.seed_prompts} & {ex.triple for ex in splits.train}


def test_splits_deterministic_and_seeded(splits):
  again = data.make_splits(["symbolic", "semantic"], n_eval_per_op=64, seed=0)
  assert again == splits
  other = data.make_splits(["symbolic", "semantic"], n_eval_per_op=64, seed=1)
  assert {ex.triple for ex in other.eval} != {ex.triple for ex in splits.eval}
  assert other.seed_prompts == splits.seed_prompts


def test_heldout_triples_are_a_random_sample_not_the_smallest():
  # Issue 10.1: eval used to be sorted by (a, b), so the first 50 of multiply had operands averaging ~7.
  full = data.make_splits(["symbolic"], n_eval_per_op=200, seed=0)
  seed_triples = set(data.SEED_TRIPLES)
  for op in ("multiply", "add", "subtract"):
    held = [ex for ex in full.eval if ex.operation == op and ex.triple not in seed_triples]
    population = np.mean([a for a, _ in data.all_pairs(op)])
    first = np.mean([ex.a for ex in held[:50]])
    # The first 50 of a random order: their mean first operand is within sampling noise of the population's.
    sd = np.std([a for a, _ in data.all_pairs(op)]) / np.sqrt(50)
    assert abs(first - population) < 4 * sd, (op, first, population)
    assert [ex.triple for ex in held] != sorted(ex.triple for ex in held)


def test_no_commutative_swap_crosses_the_split():
  # Issue 10.2: ~90% of held-out a + b / a * b had their swap b + a / b * a in training.
  for seed in (0, 1, 2):
    s = data.make_splits(["symbolic", "semantic"], n_eval_per_op=200, seed=seed)
    train = {ex.triple for ex in s.train}
    held = {ex.triple for ex in s.eval}
    for a, op, b in held:
      if op in data.COMMUTATIVE:
        assert (b, op, a) in held and (b, op, a) not in train, (a, op, b)
    counts = collections.Counter((ex.operation, ex.fmt) for ex in s.eval)
    assert counts["multiply", "symbolic"] == counts["add", "semantic"] == 200  # exact, though units come in twos


def test_heldout_identity_tells_splits_apart_but_not_formats():
  a = data.make_splits(["symbolic"], n_eval_per_op=64, seed=0)
  b = data.make_splits(["semantic"], n_eval_per_op=64, seed=0)
  c = data.make_splits(["symbolic"], n_eval_per_op=64, seed=1)
  d = data.make_splits(["symbolic"], n_eval_per_op=32, seed=0)
  ids = [data.heldout_identity(s.eval, 0, 64)["heldout_sha256"] for s in (a, b, c, d)]
  assert ids[0] == ids[1]  # the same triples in another format: the same split
  assert len({ids[0], ids[2], ids[3]}) == 3


def test_jsonl_rows_that_are_heldout_prompts_are_refused(tmp_path):
  # Issue 10.9: user rows were never checked against the held-out split.
  s = data.make_splits(["symbolic", "semantic"], n_eval_per_op=64, seed=0)
  held = s.eval[5]
  path = tmp_path / "rows.jsonl"
  trained = s.train[0]
  rows = [
    {"prompt": trained.prompt, "response": trained.answer, "operation": trained.operation},
    {"prompt": "What is  " + held.prompt.removeprefix("What is ").rstrip(), "response": "1", "operation": held.operation}
    if held.fmt == "semantic"
    else {"prompt": held.prompt.rstrip() + "  ", "response": "1", "operation": held.operation},
  ]
  path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  loaded = data.load_jsonl(str(path))
  data.check_jsonl_against_heldout(loaded[:1], s.eval, str(path))  # a training prompt passes
  with pytest.raises(UserError, match=r"rows.jsonl:2: .*held-out evaluation prompt"):
    data.check_jsonl_against_heldout(loaded, s.eval, str(path))


def test_split_arguments_checked():
  with pytest.raises(UserError, match="seed triples"):
    data.make_splits(["symbolic"], n_eval_per_op=1)
  with pytest.raises(UserError, match="format"):
    data.make_splits(["words"])
  with pytest.raises(UserError, match="empty"):
    data.make_splits([])


# --- JSONL -------------------------------------------------------------------------------------------------


def write(tmp_path, lines):
  path = tmp_path / "rows.jsonl"
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def test_jsonl_loads(tmp_path):
  row = {"prompt": "2 + 2 = ", "response": "4", "operation": "add"}
  path = write(tmp_path, [json.dumps(row), "", json.dumps(row)])
  rows = data.load_jsonl(path)
  assert rows == [data.Example("2 + 2 = ", "4", "add", None, None, "jsonl")] * 2


@pytest.mark.parametrize(
  "bad_line, message",
  [
    ("{not json", "malformed JSON"),
    (json.dumps({"prompt": "x", "operation": "add"}), "missing field 'response'"),
    (json.dumps({"prompt": "x", "response": "1", "operation": "modulo"}), "unknown operation 'modulo'"),
    (json.dumps(["x", "1", "add"]), "JSON object"),
  ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
  good = json.dumps({"prompt": "1 + 1 = ", "response": "2", "operation": "add"})
  path = write(tmp_path, [good, "", bad_line])
  with pytest.raises(UserError) as err:
    data.load_jsonl(path)
  assert f"{path}:3" in str(err.value) and message in str(err.value)


def test_jsonl_empty_or_missing(tmp_path):
  path = write(tmp_path, ["", "  "])
  with pytest.raises(UserError, match="no rows"):
    data.load_jsonl(path)
  with pytest.raises(UserError, match="does not exist"):
    data.load_jsonl(str(tmp_path / "absent.jsonl"))


# --- encoding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("add_bos", [True, False])
def test_prompt_is_prefix_and_same_everywhere(add_bos):
  tok = char_tokenizer(merges=[(" ", "*"), ("=", " ")], add_bos=add_bos)
  for ex in [data.make_example(7, "multiply", 8, "symbolic"), data.make_example(81, "divide", 9, "semantic")]:
    enc = data.encode_example(tok, ex.prompt, ex.answer, append_eos=False)
    prompt_ids = data.encode_prompt(tok, ex.prompt)
    assert enc.ids[: enc.prompt_len] == prompt_ids
    assert (enc.ids[0] == tok.bos_id) == add_bos
    assert tok.decode(enc.answer_ids) == ex.answer
    with_eos = data.encode_example(tok, ex.prompt, ex.answer, append_eos=True)
    assert with_eos.ids == enc.ids + [tok.eos_id] and with_eos.prompt_len == enc.prompt_len


def test_boundary_merge_is_refused():
  # Like a GPT-2 BPE without digit splitting: " 5" is one token, so "7 * 8 = " + "56" re-tokenizes the space.
  tok = char_tokenizer(merges=[(" ", "5")])
  with pytest.raises(UserError, match="merges") as err:
    data.encode_example(tok, "7 * 8 = ", "56", append_eos=False)
  assert "'7 * 8 ='" in str(err.value) and "' 56'" in str(err.value)
  # The suggested fix works.
  enc = data.encode_example(tok, "7 * 8 =", " 56", append_eos=False)
  assert tok.decode(enc.answer_ids) == " 56"


def test_eos_required_when_appended():
  tok = char_tokenizer()
  tok.eos_id = None
  with pytest.raises(UserError, match="append_eos"):
    data.encode_example(tok, "1 + 1 = ", "2", append_eos=True)


# --- batches -----------------------------------------------------------------------------------------------


def test_shifted_answer_positions_on_hand_built_example(tok):
  enc = data.encode_example(tok, "ab", "cd", append_eos=True)
  bos, eos = tok.bos_id, tok.eos_id
  a, b, c, d = (tok.backend.token_to_id(ch) for ch in "abcd")
  assert enc.ids == [bos, a, b, c, d, eos] and enc.prompt_len == 3
  batch = data.collate([enc], ["add"], seq_len=8, max_answer_tokens=4, pad_id=tok.pad_id)
  assert batch["tokens"][0].tolist() == [bos, a, b, c, d, eos, tok.pad_id, tok.pad_id]
  assert batch["mask"][0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
  assert batch["readout"][0] == 2  # the last prompt token, "b"
  # The logits at "b" predict "c", at "c" predict "d", at "d" predict EOS.
  assert batch["answer_pos"][0].tolist() == [2, 3, 4, 0]
  assert batch["answer_target"][0, :3].tolist() == [c, d, eos]
  assert batch["answer_weight"][0].tolist() == [1, 1, 1, 0]
  assert batch["label"][0] == data.OPERATIONS.index("add")


def test_batch_shapes_padding_and_shift(tok, splits):
  examples = splits.eval[::37]
  encoded = data.encode_examples(tok, examples, append_eos=True)
  seq_len = data.choose_seq_len(encoded)
  assert seq_len % 16 == 0 and seq_len >= max(len(e.ids) for e in encoded)
  batch = data.collate(encoded, [ex.operation for ex in examples], seq_len, 8, tok.pad_id)
  n = len(examples)
  assert batch["tokens"].shape == batch["mask"].shape == (n, seq_len)
  assert batch["answer_pos"].shape == (n, 8) and batch["answer_weight"].dtype == np.float32
  for key in ("tokens", "mask", "readout", "label", "answer_pos", "answer_target"):
    assert batch[key].dtype == np.int32, key
  rows = np.arange(n)[:, None]
  w = batch["answer_weight"] > 0
  # Every weighted slot: the token after its position is its target, and that token is real.
  nxt = batch["tokens"][rows, batch["answer_pos"] + 1]
  assert np.all(nxt[w] == batch["answer_target"][w])
  assert np.all(batch["mask"][rows, batch["answer_pos"] + 1][w] == 1)
  # Padding slots carry weight 0 and position 0; the weight count is answer + EOS tokens.
  assert np.all(batch["answer_pos"][~w] == 0)
  assert batch["answer_weight"].sum(1).tolist() == [len(e.ids) - e.prompt_len for e in encoded]
  assert np.all(batch["tokens"][batch["mask"] == 0] == tok.pad_id)
  assert np.all(batch["mask"][rows, batch["readout"][:, None]] == 1)


def test_collate_refusals(tok):
  enc = data.encode_example(tok, "1 + 1 = ", "123456789", append_eos=False)
  with pytest.raises(UserError, match="max_answer_tokens"):
    data.collate([enc], ["add"], seq_len=32, max_answer_tokens=8, pad_id=0)
  with pytest.raises(UserError, match="seq_len"):
    data.collate([enc], ["add"], seq_len=8, max_answer_tokens=16, pad_id=0)
  with pytest.raises(UserError, match="unknown label 'modulo'"):
    data.collate([enc], ["modulo"], seq_len=32, max_answer_tokens=16, pad_id=0)


# --- batch order -------------------------------------------------------------------------------------------


def test_batch_indices_pure_in_seed_and_step():
  run = [data.batch_indices(50, 8, s, seed=3) for s in range(20)]
  resumed = [data.batch_indices(50, 8, s, seed=3) for s in range(10, 20)]
  assert all(np.array_equal(x, y) for x, y in zip(run[10:], resumed))
  other = [data.batch_indices(50, 8, s, seed=4) for s in range(20)]
  assert not all(np.array_equal(x, y) for x, y in zip(run, other))
  # Read as a stream, each epoch is a permutation: 48 of 50 seen after 6 steps, every one after 50 positions.
  stream = np.concatenate(run)
  assert sorted(stream[:50].tolist()) == list(range(50))
  assert sorted(stream[50:100].tolist()) == list(range(50))


def test_balanced_batches(splits):
  labels = [ex.operation for ex in splits.train]
  for step in (0, 1, 7, 500):
    idx = data.batch_indices(len(labels), 8, step, seed=0, labels=labels)
    assert collections.Counter(labels[i] for i in idx) == {op: 2 for op in data.OPERATIONS}
    assert np.array_equal(idx, data.batch_indices(len(labels), 8, step, seed=0, labels=labels))
  # Uneven batch size: counts differ by at most one in a batch and even out over steps.
  total = collections.Counter()
  for step in range(8):
    idx = data.batch_indices(len(labels), 6, step, seed=0, labels=labels)
    counts = collections.Counter(labels[i] for i in idx)
    assert max(counts.values()) - min(counts.values()) <= 1
    total.update(counts)
  assert set(total.values()) == {12}


def test_balanced_small_class_cycles_through_epochs():
  labels = ["x"] * 3 + ["y"] * 30
  seen = np.concatenate([data.batch_indices(33, 4, s, seed=0, labels=labels) for s in range(3)])
  xs = [i for i in seen if labels[i] == "x"]
  assert len(xs) == 6 and sorted(xs[:3]) == sorted(xs[3:]) == [0, 1, 2]


def test_process_slice():
  idx = np.arange(8) * 10
  parts = [data.process_slice(idx, p, 4) for p in range(4)]
  assert np.array_equal(np.concatenate(parts), idx)
  assert parts[1].tolist() == [20, 30]
  with pytest.raises(UserError, match="divisible"):
    data.process_slice(idx, 0, 3)


@pytest.mark.embedded
def test_readout_predicts_the_first_digit_in_both_formats_with_smollm2():
  # Issue 10.10: SmolLM2 encodes "? 56" as "?", " ", "5", "6": with prompts ending in "?" the semantic readout
  # predicted a bare space, one token before the symbolic format's readout, which predicts the first digit.
  from lazarus_jax.models import gguf_loader

  tok = gguf_loader.load_gguf(gguf_loader.embedded_gguf_path()).tokenizer
  s = data.make_splits(["symbolic", "semantic"], n_eval_per_op=16, seed=0)
  readout_tokens = set()
  for ex in s.eval + s.train[::97]:
    enc = data.encode_example(tok, ex.prompt, ex.answer, append_eos=True)
    first = tok.decode([enc.answer_ids[0]])
    assert first.isdigit() and len(first) == 1, (ex.prompt, ex.answer, first)
    readout_tokens.add(tok.decode([enc.ids[enc.readout]]))
  assert readout_tokens == {" "}  # the same token, the same relative place, in both formats
