"""Command-line tools for looking at what a config does (`python -m barlow_jax.tools.NAME`)."""
