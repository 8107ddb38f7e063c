"""Flow-matching samplers: schedules and packing (flow_match), Euler sampling and ReFL (sampler)."""

# FLUX registers its generator kind ('flux') with rdance.diffusion.generator.
from rdance.diffusion import flux_generator as _flux_generator  # noqa: E402,F401
