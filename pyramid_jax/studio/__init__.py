"""The studio: a generation watched and steered in the browser (`python -m pyramid_jax.serve`)."""
