"""stage2/budget.py: the run's record of its sample budget (grow on overflow, stop
at the cap, never grow when fixed, saved and resumed) and its config keys."""
import json
import logging

import pytest

from configs import hoi
from interfusion_jax.stage2 import budget as budget_lib
from interfusion_jax.stage2 import config as config_lib

RAYS = 100


def _budget(mode="grow", maximum=512, scenes=1):
  return budget_lib.SampleBudget(budget_lib.BudgetPolicy(mode, maximum), 64, RAYS, scenes)


def test_grows_on_overflow_to_the_size_that_fits_and_logs_each_growth_once(caplog):
  b = _budget(scenes=2)
  with caplog.at_level(logging.WARNING):
    assert b.observe(0, [0.0, 0.0], [0.0, 0.0]) is None           # nothing dropped
    # scene 1's worst render lost 30 per ray on average: 94 per ray -> 128
    assert b.observe(1, [10.0, 50.0 * RAYS], [5.0, 30.0 * RAYS]) == 128
    assert b.observe(2, [0.0, 0.0], [0.0, 0.0]) is None
    # 128 + 200 = 328 per ray needed -> 512 (not 256)
    assert b.observe(3, [300.0 * RAYS, 0.0], [200.0 * RAYS, 0.0]) == 512
  assert [r.getMessage().count("growing it to") for r in caplog.records] == [1, 1]
  assert "step 1" in caplog.records[0].getMessage()
  s0, s1 = b.summary(0), b.summary(1)
  assert s0["growths"] == [{"step": 1, "from": 64, "to": 128}, {"step": 3, "from": 128, "to": 512}]
  assert (s0["start"], s0["final"], s0["max"], s0["mode"]) == (64, 512, 512, "grow")
  # per scene: peak of samples_dropped, steps that dropped, their total
  assert (s0["samples_dropped_peak"], s0["steps_with_drops"], s0["samples_dropped_total"]) == (
      300.0 * RAYS, 2, 10.0 + 300.0 * RAYS)
  assert (s1["samples_dropped_peak"], s1["steps_with_drops"]) == (50.0 * RAYS, 1)


def test_stops_at_the_maximum_and_says_so_once(caplog):
  b = _budget(maximum=128)
  with caplog.at_level(logging.WARNING):
    assert b.observe(0, [1e5], [1e5]) == 128                      # capped
    assert b.observe(1, [1e4], [1e4]) is None
    assert b.observe(2, [1e4], [1e4]) is None
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 2 and "max_sample_budget" in messages[1] and "dropped" in messages[1]
  assert b.current == 128 and b.summary()["steps_with_drops"] == 3


def test_fixed_mode_never_grows_but_counts_what_it_drops(caplog):
  b = _budget(mode="fixed")
  with caplog.at_level(logging.WARNING):
    for step in range(3):
      assert b.observe(step, [1e5], [1e5]) is None
  assert not caplog.records
  s = b.summary()
  assert (s["final"], s["growths"], s["samples_dropped_peak"], s["steps_with_drops"]) == (
      64, [], 1e5, 3)


def test_saved_record_resumes_at_the_budget_in_effect(tmp_path):
  b = _budget()
  b.observe(1, [50.0 * RAYS], [30.0 * RAYS])     # 64 -> 128 after step 1
  b.observe(4, [1.0], [1.0])                     # 128 -> 256 after step 4
  b.save(tmp_path)
  assert json.loads((tmp_path / budget_lib.FILE).read_text())["final"] == 256
  for step, expected in ((1, 64), (2, 128), (4, 128), (5, 256)):
    r = _budget()
    r.resume([tmp_path], step)                   # step: the restored state's step count
    assert r.current == expected, step
  r = _budget()
  r.resume([tmp_path], 9)
  assert r.summary()["samples_dropped_peak"] == 50.0 * RAYS and r.summary()["steps_with_drops"] == 2
  fixed = _budget(mode="fixed")                  # a fixed run keeps its budget
  fixed.resume([tmp_path], 9)
  assert fixed.current == 64
  fresh = _budget()                              # no record: a fresh one
  fresh.resume([tmp_path / "none", None], 9)
  assert fresh.current == 64 and fresh.summary()["steps_with_drops"] == 0


def test_config_keys_and_their_checks():
  paper = config_lib.parse(hoi.get_config("paper"))
  assert config_lib.budget_policy(paper) == budget_lib.BudgetPolicy("grow", 512)
  assert config_lib.render_spec(paper).sample_budget == 64
  # the test-sized variants keep one compile; README's first command (cpu) grows
  for variant, mode in (("smoke", "fixed"), ("quick", "fixed"), ("cpu", "grow")):
    assert config_lib.budget_policy(config_lib.parse(hoi.get_config(variant))).mode == mode
  cfg = hoi.get_config("paper")
  cfg.render.max_sample_budget = 256
  assert config_lib.budget_policy(config_lib.parse(cfg)).maximum == 256
  for key, value, match in (("max_sample_budget", 1024, "max_sample_budget = 1024 exceeds"),
                            ("max_sample_budget", 32, "below the starting budget 64"),
                            ("budget_growth", "double", "budget_growth = 'double'")):
    cfg = hoi.get_config("paper")
    cfg.render[key] = value
    with pytest.raises(config_lib.ConfigError, match=match):
      config_lib.parse(cfg)
