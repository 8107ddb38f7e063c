"""rdance: generative reward models and reward fine-tuning of visual generators in JAX/Flax."""
__version__ = "0.1.0"

from rdance.core.quiet_tpu import choose_cpu_when_alone as _choose_cpu_when_alone

_choose_cpu_when_alone()
