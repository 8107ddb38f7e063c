"""Shared checks of the model tests."""
import jax
import numpy as np


def assert_same_step(got, ref, out_atol: float):
    """Two ``value_and_grad(loss, has_aux=True)`` results ((loss, output), gradients), e.g. sharded
    and unsharded: equal up to summation order."""
    (loss_got, out_got), grads_got = got
    (loss_ref, out_ref), grads_ref = ref
    np.testing.assert_allclose(out_got, out_ref, atol=out_atol)
    np.testing.assert_allclose(loss_got, loss_ref, rtol=1e-5)
    flat_got, flat_ref = jax.tree.leaves(grads_got), jax.tree.leaves(grads_ref)
    assert len(flat_got) == len(flat_ref) > 20
    for a, b in zip(flat_got, flat_ref):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
