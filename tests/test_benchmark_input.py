"""The input benchmark's PIL peer: the reference transform's layout, and a tiny side-by-side run."""

import random

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("PIL")

from barlow_jax.benchmarks import input as input_benchmark  # noqa: E402
from barlow_jax.benchmarks import pil_peer  # noqa: E402


def test_pil_peer_makes_two_normalised_views_with_torchvision_crop_semantics():
  jpegs = input_benchmark.natural_jpegs(2)
  a, b = pil_peer.two_views(jpegs[0], random.Random(0), size=32)
  for view in (a, b):
    assert view.shape == (3, 32, 32) and view.dtype == np.float32  # ToTensor layout.
    pixels = view.transpose(1, 2, 0) * pil_peer.STD + pil_peer.MEAN
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  assert not np.allclose(a, b)
  rng = random.Random(3)
  for _ in range(50):
    top, left, h, w = pil_peer.crop_box(rng, 40, 30)
    assert 0 <= top <= 30 - h and 0 <= left <= 40 - w and 0.08 * 1200 - 20 <= h * w <= 1200
  # No box of area 1 and aspect 3/4..4/3 fits a 100 x 10 strip: the centred fallback.
  assert pil_peer.crop_box(rng, 10, 100, scale=(1.0, 1.0)) == ((100 - 13) // 2, 0, 13, 10)


def test_side_by_side_run_reports_rates_ratios_and_op_costs():
  result = input_benchmark.run_peer(0.05, 2, 1, input_benchmark.natural_jpegs(2, 40, 48), size=16)
  rates = result["median_examples_per_cpu_s"]
  assert set(rates) >= {input_benchmark.FULL, input_benchmark.HOST_PART, input_benchmark.PEER}
  assert all(r > 0 for r in rates.values())
  assert result["ratio_to_peer"][input_benchmark.PEER] == 1.0
  assert set(result["op_ms_per_example"]) == set(input_benchmark.WITHOUT)
  assert "x PIL" in input_benchmark.peer_report(result, 0, (1.0, 1.0, 1.0))
