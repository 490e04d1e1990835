"""python -m interfusion_jax.export: a bad --texture_size is one line and exit 2, before any
run is read."""
from interfusion_jax import export


import pytest


@pytest.mark.parametrize("size", [-1, 4])
def test_bad_texture_size_fails_fast_in_one_line(tmp_path, capsys, size):
  assert export.main([f"--workdir={tmp_path / 'no_run'}", f"--texture_size={size}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"--texture_size={size}" in err[0] and "no_run" not in err[0]
