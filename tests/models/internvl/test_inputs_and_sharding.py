"""Bad inputs fail clearly; a forward sharded over 8 fake devices (fsdp x tensor) equals one device."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rdance import sharding as sh
from rdance.models import internvl


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
