"""Old import path of the offline digits datasets: now `barlow_jax.data.digits` (NumPy only).

Kept so existing code keeps running; new code imports `barlow_jax.data.digits`.
"""

from barlow_jax.data.digits import (  # noqa: F401
  CLUTTERED_RENDERS,
  CLUTTERED_SIZE,
  DIGITS_SIZE,
  IN_MEMORY,
  NUM_TEST_DIGITS,
  NUM_TRAIN_DIGITS,
  cluttered_digits,
  digits,
)
