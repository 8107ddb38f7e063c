"""Flow-matching samplers: schedules and packing (flow_match), Euler sampling and ReFL (sampler)."""
