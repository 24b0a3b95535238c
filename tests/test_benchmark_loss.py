"""Smoke test of `python -m barlow_jax.benchmark loss` on a tiny grid (fresh subprocesses)."""

import json

from barlow_jax import benchmark


def test_loss_benchmark_runs_and_methods_agree_with_torch(tmp_path, capsys):
  out = tmp_path / "loss.json"
  argv = ["benchmark", "loss", "--n", "16", "--d", "24", "--methods", "auto", "dense", "--torch"]
  argv += ["--repeats", "1", "--out", str(out)]
  assert benchmark.main(argv) == 0
  result = json.loads(out.read_text())
  rows = {row["method"]: row for row in result["rows"]}
  assert set(rows) == {"auto", "dense", "torch"}
  assert all(row["status"] == "ok" for row in rows.values()), rows
  assert rows["auto"]["resolved_method"] == "gram"  # N < D.
  # Same inputs everywhere: the JAX methods and the PyTorch reference formula agree.
  for method in ("auto", "dense"):
    assert abs(rows[method]["loss"] - rows["torch"]["loss"]) <= 1e-4 * abs(rows["torch"]["loss"])
    assert rows[method]["peak_bytes"] > 0 and rows[method]["median_s"] > 0
  assert "| 16 | 24 | auto | gram |" in capsys.readouterr().out


def test_loss_benchmark_skips_what_cannot_fit(tmp_path):
  out = tmp_path / "loss.json"
  argv = ["benchmark", "loss", "--n", "64", "--d", "65536", "--methods", "dense", "--no-torch"]
  argv += ["--max-bytes", str(2**30), "--out", str(out)]
  assert benchmark.main(argv) == 0
  (row,) = json.loads(out.read_text())["rows"]
  assert row["status"].startswith("skipped: needs ~")
