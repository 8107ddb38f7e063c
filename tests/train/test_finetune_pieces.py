"""The fine-tuning pieces on their own: RWR weights, the Best-of-N bank, LoRA, EMA, monitors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rdance.core import sharding as sh
from rdance.train import bank as banklib, ema, lora, monitors
from rdance.train.finetune_step import StepSettings, random_shift, rwr_weights


# ----- RWR weights
def test_rwr_weights_are_a_per_prompt_softmax_of_normalised_rewards():
    rewards = jnp.array([[0.1, 0.2, 0.4, 0.3], [0.9, 0.9, 0.9, 0.9], [0.0, 1.0, 0.0, 0.0]])
    w = rwr_weights(rewards, temperature=0.5)
    # Each prompt's weights average 1; better samples weigh more; equal rewards weigh equally.
    np.testing.assert_allclose(w.sum(-1), [4, 4, 4], rtol=1e-6)
    assert list(np.argsort(w[0])) == list(np.argsort(rewards[0]))
    np.testing.assert_allclose(w[1], 1.0, rtol=1e-6)
    # Per-prompt normalisation: an affine change of a prompt's rewards changes nothing.
    np.testing.assert_allclose(rwr_weights(3 * rewards + 7, 0.5), w, rtol=1e-4)
    # The closed form for one prompt.
    z = (rewards[0] - rewards[0].mean()) / rewards[0].std()
    np.testing.assert_allclose(w[0], 4 * jax.nn.softmax(z / 0.5), rtol=1e-4)
    # Temperature: high -> uniform, low -> all weight on the best sample.
    np.testing.assert_allclose(rwr_weights(rewards, 1e4)[0], 1.0, rtol=1e-3)
    np.testing.assert_allclose(rwr_weights(rewards, 1e-3)[0], [0, 0, 4, 0], atol=1e-4)


# ----- the reference bank
def preferences(quality, bias=0.1):
    """P(j beats reference i) from latent qualities, with a position bias towards image 2."""
    q = np.asarray(quality, np.float64)
    return 1 / (1 + np.exp(-(q[..., None, :] - q[..., :, None]) * 3 - bias))


def test_random_shift_translates_each_image_by_its_own_offset_with_edges_repeated():
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(6, 9, 11, 3)), jnp.float32)
    key, ids = jax.random.key(3), jnp.arange(6)
    assert random_shift(images, key, ids, 0) is images
    shifted = np.asarray(random_shift(images, key, ids, 2))
    assert shifted.shape == images.shape
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    offsets = []
    for i in range(6):   # each output is one window of the edge-padded image, offsets within ±2
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if np.array_equal(padded[i, dy:dy + 9, dx:dx + 11], shifted[i])]
        assert hits, f"image {i} is not a translation of its input"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1   # drawn per image, not one offset for the batch
    # The same key and ids give the same shifts (resume), another id another draw.
    np.testing.assert_array_equal(shifted, random_shift(images, key, ids, 2))
    # Differentiable: the gradient of the sum counts how often each pixel is read.
    grad = jax.grad(lambda x: random_shift(x, key, ids, 2).sum())(images)
    assert float(grad.sum()) == pytest.approx(images.size)


def test_round_robin_ranks_by_wins_and_cancels_position_bias():
    quality = np.array([[0.3, 2.0, -1.0, 0.9], [1.0, 0.0, 0.5, -0.2]])
    wins, soft = banklib.round_robin(preferences(quality, bias=1.0))
    np.testing.assert_array_equal(wins, np.argsort(np.argsort(quality, -1), -1))
    assert banklib.select(wins, soft, 2, "top").tolist() == [[1, 3], [0, 2]]
    assert banklib.select(wins, soft, 2, "bottom").tolist() == [[2, 0], [3, 1]]


def test_bank_keeps_the_best_candidates_and_refuses_other_settings(tmp_path):
    rng = np.random.default_rng(0)
    prompts = [f"prompt {i}" for i in range(5)]
    quality = rng.normal(size=(5, 6))
    sampled = []

    def sample_fn(prompt_index, sample_ids):
        sampled.append(len(sample_ids))
        # Image value = the candidate's id, so the score function can look its quality up.
        return np.broadcast_to(sample_ids[:, None, None, None], (len(sample_ids), 2, 2, 3)).astype(np.uint8)

    def score_fn(prompt_index, refs, images):
        i, j = refs[:, 0, 0, 0] % 6, images[:, 0, 0, 0] % 6
        return preferences(np.stack([quality[prompt_index, i], quality[prompt_index, j]], -1))[:, 0, 1]

    bank = banklib.build(prompts, sample_fn, score_fn, num_samples=6, top_k=2, how="top", chunk=12,
                         settings={"seed": 1})
    assert bank.images.shape == (5, 2, 2, 2, 3)
    best = np.argsort(-quality, -1)[:, :2]
    np.testing.assert_array_equal(bank.chosen, best)
    np.testing.assert_array_equal(bank.images[:, :, 0, 0, 0], np.arange(5)[:, None] * 6 + best)
    assert max(sampled) <= 12   # a group of prompts at a time, never the whole set

    banklib.save(bank, str(tmp_path))
    assert banklib.exists(str(tmp_path))
    again = banklib.load(str(tmp_path), {"seed": 1})
    np.testing.assert_array_equal(again.images, bank.images)
    assert again.prompts == prompts
    with pytest.raises(ValueError, match=r"other settings .*'seed': \(1, 2\)"):
        banklib.load(str(tmp_path), {"seed": 2})
    with pytest.raises(ValueError, match="2 <= N <= 16"):
        banklib.build(prompts, sample_fn, score_fn, num_samples=17, top_k=1, how="top", chunk=8, settings={})


# ----- LoRA
def test_lora_starts_at_the_base_model_and_shards_like_its_kernels(devices):
    base = {"block": {"attn": {"kernel": jnp.ones((3, 8, 4)), "bias": jnp.zeros((3, 4))}},
            "out": {"kernel": jnp.ones((4, 8))}}
    factors = lora.init(base, 2, r"attn/", jax.random.key(0))
    assert jax.tree.map(jnp.shape, factors) == {"block": {"attn": {"kernel": {
        "lora_a": (3, 8, 2), "lora_b": (3, 2, 4)}}}}
    merged = lora.merge(base, factors, 4.0)
    jax.tree.map(np.testing.assert_array_equal, merged, base)
    factors["block"]["attn"]["kernel"]["lora_b"] = jnp.ones((3, 2, 4))
    merged = lora.merge(base, factors, 0.5)
    a = factors["block"]["attn"]["kernel"]["lora_a"]
    np.testing.assert_allclose(merged["block"]["attn"]["kernel"], 1 + 0.5 * a @ jnp.ones((3, 2, 4)), rtol=1e-6)
    np.testing.assert_array_equal(merged["out"]["kernel"], base["out"]["kernel"])

    mesh = sh.make_mesh((1, 4, 2), devices)
    base_shardings = {"block": {"attn": {"kernel": jax.NamedSharding(mesh, jax.P(None, "fsdp", "tensor")),
                                         "bias": jax.NamedSharding(mesh, jax.P(None, "tensor"))}},
                      "out": {"kernel": jax.NamedSharding(mesh, jax.P("fsdp"))}}
    specs = jax.tree.map(lambda s: s.spec, lora.shardings(base_shardings, factors))
    assert specs["block"]["attn"]["kernel"] == {"lora_a": jax.P(None, "fsdp", None),
                                                "lora_b": jax.P(None, None, "tensor")}
    with pytest.raises(ValueError, match="matches no kernel"):
        lora.targets(base, "nothing")


def test_ema_with_warmup():
    assert float(ema.decay_at(0, 0.99, True)) == pytest.approx(0.1)
    assert float(ema.decay_at(10_000, 0.99, True)) == pytest.approx(0.99)
    assert float(ema.decay_at(0, 0.99, False)) == pytest.approx(0.99)
    out = ema.update({"w": jnp.zeros(2)}, {"w": jnp.ones(2)}, jnp.float32(0.75))
    np.testing.assert_allclose(out["w"], 0.25)


# ----- monitors
def test_reward_window_matches_numpy_across_the_wrap():
    rng = np.random.default_rng(0)
    window = jnp.zeros((3, 4))
    history = []
    for step in range(7):
        rewards = rng.uniform(size=4).astype(np.float32)
        history.append(rewards)
        window = monitors.window_push(window, step, rewards)
        stats = monitors.window_stats(window, step)
        recent = np.stack(history[-3:])
        np.testing.assert_allclose(stats["window_mean"], recent.mean(), rtol=1e-5)
        np.testing.assert_allclose(stats["window_std"], recent.std(), rtol=1e-5)
        np.testing.assert_allclose(stats["window_std_of_means"], recent.mean(1).std(), rtol=1e-4, atol=1e-7)


def test_collapse_and_diversity():
    rewards = jnp.array([[0.5, 0.51, 0.505], [0.1, 0.9, 0.5]])
    assert float(monitors.collapse_fraction(rewards, 0.02)) == 0.5
    images = jax.random.uniform(jax.random.key(0), (2, 3, 4, 4, 3))
    images = images.at[1].set(images[1, 0])     # prompt 1: three identical samples
    naive = [np.mean([np.sqrt(np.mean((images[p, i] - images[p, j]) ** 2))
                      for i in range(3) for j in range(3) if i != j]) for p in range(2)]
    np.testing.assert_allclose(monitors.diversity(images), naive, rtol=1e-4, atol=1e-6)
    assert float(monitors.diversity(images)[1]) < 1e-3
    grid = monitors.image_grid(np.zeros((5, 4, 4, 3), np.uint8), 3)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)


# ----- data
def test_prompt_files_caption_images_and_examples(tmp_path):
    from PIL import Image

    from rdance.train.finetune_data import CaptionImages, FinetuneExamples, read_prompts
    from rdance.world.captions import world_prompt_split
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\n")
    assert read_prompts(str(tmp_path / "prompts.txt")) == ["a red circle", "two blue squares"]
    (tmp_path / "bad.txt").write_text("a red circle\n\ntwo blue squares\n")
    with pytest.raises(ValueError, match=r"blank lines \[2\]"):
        read_prompts(str(tmp_path / "bad.txt"))

    Image.fromarray(np.full((8, 12, 3), 200, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "captions.jsonl").write_text('{"prompt": "grey", "image": "a.png"}\n')
    pairs = CaptionImages(str(tmp_path / "captions.jsonl"), 4, 6)
    prompt, image = pairs[0]
    assert prompt == "grey" and image.shape == (4, 6, 3) and image.dtype == np.uint8
    (tmp_path / "broken.jsonl").write_text('{"prompt": "grey"}\n')
    with pytest.raises(ValueError, match="line 1: a record needs"):
        CaptionImages(str(tmp_path / "broken.jsonl"), 4, 6)

    train, heldout = world_prompt_split(0, 20, 10)
    assert len({s.prompt for s in train + heldout}) == 30
    with pytest.raises(ValueError, match="fewer than"):
        world_prompt_split(0, 5000, 10)

    tokens = {"ids": np.arange(6).reshape(3, 2)}
    refs = np.arange(3)[:, None, None, None, None] * np.ones((3, 1, 2, 2, 3), np.uint8)
    examples = FinetuneExamples(30, tokens, {"input_ids": np.zeros((3, 4))}, refs, pairs,
                                lambda captions: {"ids": np.array([[len(c) for c in captions]])})
    example = examples[7]                           # prompt 7 mod 3 = 1, anchor pair 7 mod 1 = 0
    assert example["prompt"] == 1 and example["gen"]["ids"].tolist() == [2, 3]
    assert example["refs"][0, 0, 0, 0] == 1 and example["anchor_gen"]["ids"] == 4


def test_step_settings_name_what_is_wrong():
    StepSettings(num_steps=20, window=10, grad_steps=10).check()
    for settings, message in [
            (dict(window=0), r"refl.window=0 must be between 1 and refl.num_steps=20"),
            (dict(window=4, grad_steps=5), r"refl.grad_steps=5 must be between 1 and refl.window=4"),
            (dict(grad_steps=0), r"refl.grad_steps=0"),
            (dict(refl_loss="log"), r"refl.loss='log'"),
            (dict(algo="rwr", samples_per_prompt=1), "samples_per_prompt >= 2")]:
        with pytest.raises(ValueError, match=message):
            StepSettings(num_steps=20, **settings).check()
