"""The sweep's persistent compilation cache: on by default, the user's choice kept, off on request."""

import os

import jax
import jax.numpy as jnp
import pytest

from lazarus_jax.training import compile_cache


@pytest.fixture
def clean_cache_config():
  from jax._src import compilation_cache  # the cache binds its directory once per process: start afresh

  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", None)
  compilation_cache.reset_cache()
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  compilation_cache.reset_cache()


def test_enabled_cache_stores_compiled_programs(tmp_path, clean_cache_config, monkeypatch):
  monkeypatch.delenv("LAZARUS_JAX_COMPILATION_CACHE", raising=False)
  assert compile_cache.enable(str(tmp_path / "c")) == str(tmp_path / "c")
  jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.123456).lower(jnp.ones(7)).compile()
  assert os.listdir(tmp_path / "c")  # a cache entry was written


def test_users_cache_dir_is_kept_and_zero_turns_it_off(tmp_path, clean_cache_config, monkeypatch):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
  assert compile_cache.enable(str(tmp_path / "ours")) == str(tmp_path / "mine")
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv("LAZARUS_JAX_COMPILATION_CACHE", "0")
  assert compile_cache.enable(str(tmp_path / "ours")) is None
  assert jax.config.jax_compilation_cache_dir is None
