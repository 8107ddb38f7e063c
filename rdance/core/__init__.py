"""What every layer may use: the device mesh and logical sharding, config bounds, the console
helpers for absl mains, and keeping libtpu quiet on CPU machines."""
