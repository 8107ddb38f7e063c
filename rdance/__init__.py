"""rdance: generative reward models and reward fine-tuning of visual generators in JAX/Flax."""
__version__ = "0.1.0"
