"""barlow_jax.config: the base config is the reference's recipe (docs/reference.md)."""

from barlow_jax import config as config_lib


def test_base_config_is_the_reference():
  config = config_lib.base_config()
  assert config.batch_size == 2048
  assert config.optim.lr_weights == 0.2 and config.optim.lr_biases == 0.0048
  assert config.loss.lambd == 0.0051
  assert config.model.projector == "8192-8192-8192"
  assert config.augment.view_a.blur_prob == 1.0 and config.augment.view_a.solarize_prob == 0.0
  assert config.augment.view_b.blur_prob == 0.1 and config.augment.view_b.solarize_prob == 0.2
