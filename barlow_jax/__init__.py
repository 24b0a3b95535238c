"""Barlow Twins self-supervised learning in JAX/Flax.

Importing the package is cheap: it loads neither TensorFlow nor TFDS. The input pipeline imports
them when it is built.
"""

__version__ = "0.2.0"
