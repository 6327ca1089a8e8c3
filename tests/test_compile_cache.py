"""Where the persistent compilation cache lives, and a directory it cannot use."""

import pytest

from jaxgpt import compile_cache


def test_the_directory_comes_from_the_environment_or_the_users_cache(monkeypatch, tmp_path):
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / 'mine'))
  assert compile_cache.default_directory() == str(tmp_path / 'mine')
  monkeypatch.delenv(compile_cache.ENV)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert compile_cache.default_directory() == str(tmp_path / 'xdg' / 'jaxgpt' / 'compilation')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert compile_cache.default_directory() == str(
    tmp_path / 'home' / '.cache' / 'jaxgpt' / 'compilation'
  )


def test_a_bound_that_is_not_a_number_is_named(monkeypatch):
  monkeypatch.delenv(compile_cache.ENV_BYTES, raising=False)
  assert compile_cache.max_bytes() == compile_cache.MAX_BYTES
  monkeypatch.setenv(compile_cache.ENV_BYTES, '4G')
  with pytest.raises(ValueError, match="JAXGPT_COMPILATION_CACHE_BYTES='4G': use a number"):
    compile_cache.max_bytes()


def test_a_directory_that_cannot_be_made_raises_before_jax_is_touched(tmp_path):
  import jax

  before = jax.config.jax_compilation_cache_dir
  (tmp_path / 'a_file').write_text('')
  with pytest.raises(OSError):
    compile_cache.enable(str(tmp_path / 'a_file' / 'cache'))
  assert jax.config.jax_compilation_cache_dir == before
