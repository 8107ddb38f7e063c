"""Keep libtpu quiet on machines without TPU chips.

The test and tpu extras install libtpu (the fit check compiles for TPU topologies through it).
On a machine with no TPU chips, JAX still tries the TPU backend first; libtpu then prints an
``INVALID_ARGUMENT: unexpected worker hostname ... TPU_WORKER_HOSTNAMES`` error before JAX falls
back to the CPU. Where the CPU is the only backend JAX could end up with (no TPU chips, no GPU
plugin installed, no platform chosen by the user), we name it up front, which changes nothing
but the noise. TPU topologies for the fit check load libtpu on their own and are unaffected.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os


def gpu_plugin_installed() -> bool:
    """Whether a JAX GPU plugin (jax-cuda*/rocm plugin packages) is installed."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    if importlib.util.find_spec("jax_plugins") is None:
        return False
    import pkgutil

    import jax_plugins
    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def cpu_is_the_only_backend() -> bool:
    from jax._src import hardware_utils
    tpu_chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
    return tpu_chips == 0 and not gpu_plugin_installed()


def platform_to_set(user_choice: str | None, backends_started: bool, cpu_only) -> str | None:
    """"cpu" when nothing else could be used and nobody chose; None leaves JAX as it is."""
    if user_choice or backends_started:
        return None
    return "cpu" if cpu_only() else None


def choose_cpu_when_alone() -> None:
    import jax
    from jax._src import xla_bridge
    user_choice = os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms
    platform = platform_to_set(user_choice, xla_bridge.backends_are_initialized(), cpu_is_the_only_backend)
    if platform:
        jax.config.update("jax_platforms", platform)
