"""The one class-target resolver (DESIGN.md §2; ORIGINAL_DEFECTS #6, #7)."""

import dataclasses

import pytest
import tokenizers
from tokenizers import models, pre_tokenizers

from lazarus_jax.data.targets import DEFAULT_TARGETS, parse_targets, resolve_targets
from lazarus_jax.errors import UserError
from lazarus_jax.models.tiny import tiny_tokenizer
from lazarus_jax.models.tokenizer import Tokenizer

import repo


@pytest.fixture(scope="module")
def tok():
  return tiny_tokenizer()


def test_defaults_resolve_to_distinct_first_tokens(tok):
  r = resolve_targets(tok, DEFAULT_TARGETS, prompts=["7 * 8 = ", "What is 48 divided by 6?"])
  assert r.labels == ("multiply", "add", "subtract", "divide")
  assert len(set(r.token_ids)) == 4
  # Each default word is one token of the tiny tokenizer (" multiply" etc.): the id is that token, no warning.
  for label in DEFAULT_TARGETS:
    ids = tok.encode(" " + label)
    assert len(ids) == 1 and r.token_ids[r.index(label)] == ids[0]
  assert r.warnings == ()
  line = r.describe().splitlines()[0]
  assert line.startswith("class targets: ") and f'add=" add"(id {r.token_ids[1]})' in line


def test_bos_does_not_change_ids(tok):
  with_bos = dataclasses.replace(tok, add_bos=True)
  assert with_bos.encode("7")[0] == tok.bos_id
  assert resolve_targets(with_bos).token_ids == resolve_targets(tok).token_ids


def test_collision_is_refused(tok):
  with pytest.raises(UserError, match="same token"):
    resolve_targets(tok, {"a": "add", "b": "add"})
  # Different words, same first token.
  assert tok.encode(" adds")[0] == tok.encode(" add")[0]
  with pytest.raises(UserError, match="'plus' and 'sum'"):
    resolve_targets(tok, {"plus": "add", "sum": "adds"})


def test_target_in_prompt_is_refused_unless_allowed(tok):
  symbols = {"multiply": "*", "add": "+"}
  with pytest.raises(UserError, match="appears in the prompt"):
    resolve_targets(tok, symbols, prompts=["7 * 8 = "])
  r = resolve_targets(tok, symbols, prompts=["7 * 8 = "], allow_target_in_prompt=True)
  assert r.token_ids == (tok.encode(" *")[0], tok.encode(" +")[0])
  assert any("appears in the prompt" in w for w in r.warnings)
  # Not in the prompt: no error.
  resolve_targets(tok, symbols, prompts=["What is 7 times 8?"])


def test_bare_space_first_token_is_skipped(tok):
  # Digits are split off by the tiny pre-tokenizer, so " 7" is " " + "7": a bare space would be a useless target
  # (every such word would collide on it); the word's own first token is used, with a warning.
  assert [tok.token_str(i) for i in tok.encode(" 7")] == [" ", "7"]
  r = resolve_targets(tok, {"seven": "7", "add": "add"})
  assert r.token_ids == (tok.encode("7")[0], tok.encode(" add")[0])
  assert any("bare space" in w for w in r.warnings)


def test_multi_token_word_warns(tok):
  r = resolve_targets(tok, {"x": "quixotic"})
  assert r.token_ids[0] == tok.encode(" quixotic")[0]
  assert any("needs" in w and "only the first" in w for w in r.warnings)


def test_empty_and_unknown_words_are_errors(tok):
  with pytest.raises(UserError, match="empty word"):
    resolve_targets(tok, {"add": "  "})
  with pytest.raises(UserError, match="no class targets"):
    resolve_targets(tok, {})
  backend = tokenizers.Tokenizer(models.WordLevel({"<unk>": 0, "add": 1, "sub": 2}, unk_token="<unk>"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  word_tok = Tokenizer(backend=backend, bos_id=None, eos_id=None, pad_id=0, add_bos=False)
  assert resolve_targets(word_tok, {"a": "add", "s": "sub"}).token_ids == (1, 2)
  with pytest.raises(UserError, match="unknown token"):
    resolve_targets(word_tok, {"a": "add", "m": "multiply"})


def test_parse_targets():
  assert parse_targets("multiply,add") == {"multiply": "multiply", "add": "add"}
  assert parse_targets("multiply=times, add=plus") == {"multiply": "times", "add": "plus"}
  for bad in ("", ",", "a=", "a,a"):
    with pytest.raises(UserError):
      parse_targets(bad)


def test_training_refuses_a_target_found_only_in_later_prompts(tmp_path):
  # Issue 10.9: train checked the first 2000 training prompts only, all of them multiply prompts, so a
  # target copied from the divide prompts ("/") passed. Every train and held-out prompt is checked now.
  import os
  import sys

  from lazarus_jax.training import loop as train

  sys.path.insert(0, repo.ROOT)
  from configs import tiny as tiny_config

  c = tiny_config.get_config()
  c.classifier.targets.divide = "/"
  with pytest.raises(UserError, match=r"target 'divide' token .* appears in the prompt '\d+ / \d+ = '"):
    train.run(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "config.json")
