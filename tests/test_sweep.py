"""The sweep command line (interfusion_jax/sweep.py): one line and exit 2 for bad input.
"""
import os
import subprocess
import sys

from scene_rows import ROOT, ROW, _jsonl


def test_command_line_prints_one_line_and_exits_2(tmp_path):
  path = _jsonl(tmp_path, [ROW, dict(ROW, name="x"), dict(ROW, name="x")])
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "interfusion_jax.sweep",
                         "--config=configs/hoi.py:smoke", f"--prompts={path}",
                         f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2, done.stderr[-2000:]
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "row 3" in lines[0]
  assert "column 'name': duplicate scene name 'x'" in lines[0]
  assert not (tmp_path / "w").exists()
