"""One module per benchmark, each with `main(argv) -> int`; `barlow_jax.benchmark` dispatches."""
