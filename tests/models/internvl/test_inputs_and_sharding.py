"""Bad inputs fail clearly; a forward sharded over 8 fake devices (fsdp x tensor) equals one device."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rdance.core import sharding as sh
from rdance.models import internvl
from rdance.models.remat import POLICIES as REMAT_NAMES


@pytest.fixture(scope="module")
def model(hf_folder_300m):
    return internvl.load(hf_folder_300m[2])


def test_pixel_values_of_wrong_rank(model, batch):
    ids, pixels, mask = batch()
    with pytest.raises(ValueError, match=r"pixel_values must be \[tiles, 3, 28, 28\].*\(3, 28, 28\)"):
        model.logits(ids, pixels[0], mask)


def test_pixel_values_of_wrong_dtype(model, batch):
    ids, pixels, mask = batch()
    with pytest.raises(ValueError, match="normalised floats, got uint8"):
        model.logits(ids, pixels.astype(np.uint8), mask)


def test_image_tokens_not_matching_images(model, batch):
    ids, pixels, mask = batch()
    with pytest.raises(ValueError, match="12 image tokens.*2 tiles give 8 features"):
        model.logits(ids, pixels[:2], mask)
    with pytest.raises(ValueError, match="no pixel_values"):
        model.generate(ids, None, mask, max_new_tokens=2)


def test_sharded_forward_equals_unsharded(hf_folder_300m, model, batch, devices):
    mesh = sh.make_mesh((1, 2, 4), devices)
    sharded = internvl.load(hf_folder_300m[2], mesh=mesh)
    kernel = sharded.state["language"]["layers"]["attn"]["q"]["kernel"].value
    assert kernel.sharding.spec == P(None, "fsdp", "tensor")
    assert len(kernel.sharding.device_set) == 8
    ids, pixels, mask = batch()
    with jax.default_matmul_precision("highest"):
        want = np.asarray(model.logits(ids, pixels, mask))
        got = sharded.logits(ids, pixels, mask)
        tokens = sharded.generate(ids, pixels, mask, max_new_tokens=4).tokens
        want_tokens = model.generate(ids, pixels, mask, max_new_tokens=4).tokens
    err = np.abs(np.asarray(got) - want).max()
    print(f"sharded vs unsharded: max |diff| = {err:.2e}")
    assert err < 1e-5
    np.testing.assert_array_equal(np.asarray(tokens), np.asarray(want_tokens))


def test_sampling_top_p_and_logprobs(model, batch):
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import TopPLogitsWarper
    from rdance.models.internvl.generate import top_p_filter
    logits = np.random.default_rng(0).standard_normal((3, 128)).astype(np.float32) * 3
    want = TopPLogitsWarper(0.7)(None, torch.tensor(logits)).numpy()
    np.testing.assert_array_equal(np.isinf(np.asarray(top_p_filter(jax.numpy.asarray(logits), 0.7))), np.isinf(want))

    ids, pixels, mask = batch()
    greedy = model.generate(ids, pixels, mask, max_new_tokens=6)
    # A vanishing nucleus keeps only the top token: sampling becomes greedy.
    nucleus = model.generate(ids, pixels, mask, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=3)
    np.testing.assert_array_equal(np.asarray(nucleus.tokens), np.asarray(greedy.tokens))
    a = model.generate(ids, pixels, mask, max_new_tokens=6, temperature=1.5, top_p=0.9, seed=7)
    b = model.generate(ids, pixels, mask, max_new_tokens=6, temperature=1.5, top_p=0.9, seed=7)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert bool(np.all(np.asarray(a.logprobs) <= 0))
    # EOS: the row that emits it is padded afterwards with log-prob 0.
    eos = int(greedy.tokens[0, 1])
    stopped = model.generate(ids, pixels, mask, max_new_tokens=6, eos_token_id=eos, pad_token_id=5)
    first = int(np.argmax(np.asarray(stopped.tokens[0]) == eos))
    assert np.all(np.asarray(stopped.tokens[0, first + 1:]) == 5)
    assert np.all(np.asarray(stopped.logprobs[0, first + 1:]) == 0)


def _logits_and_pixel_gradient(model, ids, pixels, mask):
    from flax import nnx

    def loss(pixels, m):
        # A copy of the state: its Variables then belong to the grad trace, as nnx requires.
        module = nnx.merge(m.graphdef, jax.tree.map(lambda a: a, m.state))
        return module(ids, pixels, mask, jax.numpy.asarray(np.cumsum(mask, -1) - 1)).sum()
    return np.asarray(model.logits(ids, pixels, mask)), np.asarray(jax.grad(loss)(jax.numpy.asarray(pixels), model))


@pytest.fixture(scope="module")
def without_remat(model, batch):
    return _logits_and_pixel_gradient(model, *batch())


@pytest.mark.parametrize("name", [n for n in REMAT_NAMES if n != "none"])
def test_every_remat_name_gives_same_logits_and_gradients(hf_folder_300m, without_remat, batch, name):
    logits, gradient = _logits_and_pixel_gradient(internvl.load(hf_folder_300m[2], remat=name), *batch())
    np.testing.assert_allclose(logits, without_remat[0], atol=1e-6)
    np.testing.assert_allclose(gradient, without_remat[1], atol=1e-5)


def test_unknown_remat_name_fails_listing_the_names(hf_folder_300m):
    with pytest.raises(ValueError, match="unknown remat 'dots_saveable'; choose one of none, full, dots, dots_no_batch"):
        internvl.load(hf_folder_300m[2], remat="dots_saveable")
