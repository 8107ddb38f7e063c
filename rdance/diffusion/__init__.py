"""Flow-matching samplers: schedules and packing (flow_match), Euler sampling and ReFL (sampler)."""

# FLUX and Wan register their generator kinds ('flux', 'wan') with rdance.diffusion.generator.
from rdance.diffusion import flux_generator as _flux_generator  # noqa: E402,F401
from rdance.diffusion import wan_generator as _wan_generator  # noqa: E402,F401
