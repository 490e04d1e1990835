"""evaluation/report.py's "Ray samples" section: the sample budget used and the
peak of samples_dropped from summary.json, with a warning when steps dropped
samples (grown or fixed budget) and none when every sample was evaluated."""
import json

from interfusion_jax.evaluation import report


def _run_dir(tmp_path, sample_budget, final_dropped=None):
  (tmp_path / "final").mkdir(parents=True)
  (tmp_path / "config.json").write_text(json.dumps(
      {"prompt": {"human": "a man", "object": "a bike", "interaction": "riding a bike"}}))
  summary = {"step": 10, "final_losses": {"loss": 1.0}}
  if sample_budget is not None:
    summary.update(sample_budget=sample_budget,
                   samples_dropped_peak=sample_budget["samples_dropped_peak"])
  if final_dropped is not None:
    summary["final_renders_samples_dropped"] = final_dropped
  (tmp_path / "final" / "summary.json").write_text(json.dumps(summary))
  return report.run_report_html(tmp_path)


def _record(mode, final, growths, peak, steps):
  return {"mode": mode, "start": 64, "final": final, "max": 512, "growths": growths,
          "samples_dropped_peak": peak, "steps_with_drops": steps,
          "samples_dropped_total": peak * steps}


def test_grown_budget_is_reported_with_its_growths(tmp_path):
  page = _run_dir(tmp_path, _record("grow", 256, [{"step": 3, "from": 64, "to": 128},
                                                  {"step": 9, "from": 128, "to": 256}],
                                    4321.0, 2))
  assert "<h2>Ray samples</h2>" in page
  assert 'class="warn" id="samples"' in page and "2 step(s) dropped" in page
  assert "64 / 256 / 512" in page
  assert "64 -&gt; 128 after step 3, 128 -&gt; 256 after step 9" in page
  assert "4321" in page


def test_fixed_budget_and_clean_runs(tmp_path):
  page = _run_dir(tmp_path / "fixed", _record("fixed", 64, [], 99.0, 5))
  assert "fixed sample budget" in page and 'class="warn" id="samples"' in page
  page = _run_dir(tmp_path / "clean", _record("grow", 64, [], 0.0, 0))
  assert 'class="ok" id="samples"' in page and "Every occupied ray sample" in page
  # a summary without the record (an older run): no section
  assert "Ray samples" not in _run_dir(tmp_path / "old", None)


def test_final_renders_left_out_samples_are_a_row(tmp_path):
  page = _run_dir(tmp_path / "a", _record("grow", 64, [], 0.0, 0),
                  {"object": 0, "human": 17, "interaction": 5})
  assert "final renders: occupied samples left out" in page
  assert "object 0, human 17, interaction 5" in page
  assert "final renders" not in _run_dir(tmp_path / "b", _record("grow", 64, [], 0.0, 0))
