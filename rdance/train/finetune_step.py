"""The fine-tuning step, one pure function: ReFL or reward-weighted flow matching, the pretraining
anchor, gradient accumulation, the optimizer, EMA and the reward monitors.

``step(state, batch, frozen, rm_params) -> (state, metrics)``. ``frozen`` holds the generator's
frozen arrays (text encoders, VAE; for LoRA also the base parameters under 'base') and
``rm_params`` the frozen reward model: both are arguments, not constants, so they stay sharded
on the mesh and out of the compiled program.

- **ReFL**: per step one k is drawn in the last ``window`` of ``num_steps`` Euler steps (so that
  k + grad_steps <= T); the sampler runs steps 0..k-1 without gradient and steps
  k..k+grad_steps-1 with it, the last graded step's x0 = x - t v is decoded and
  scored by the RM (against one of the prompt's references, or their mean, for a pairwise RM);
  loss = scale * mean(-reward) ('linear') or scale * mean(relu(margin - reward)) ('hinge', the
  original ReFL's phi). The gradient flows through the RM and the decoder into the generator.
  Optionally the scored image is randomly translated by a few pixels (``shift``).
- **RWR**: G samples per prompt without gradient, scored, and each sample's flow-matching loss
  (on its own final latents) weighted by G * softmax(z / temperature) over the prompt's samples,
  z the rewards normalised per prompt (zero mean, unit std).
- **Anchor**: the flow-matching loss on caption-image pairs, added with ``anchor_weight``; with
  ``anchor_drop_captions``, the generator's pretraining caption dropout too (``drop_captions``;
  the world's generators have one, FLUX and Wan return the tokens unchanged). Sampling uses classifier-free guidance, which subtracts the empty caption's
  velocity: an anchor on captioned pairs alone never trains that branch, and it drifts with the
  shared weights (docs/finetune.md has the demo's control with and without it).

Every random draw is keyed by (step, purpose, sample id), so a sample's noise, reference and
timestep do not depend on the micro-batch it falls in or on the mesh: accumulation and sharding
change the arithmetic's order, not the computation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rdance.core import sharding
from rdance.diffusion import generator as genlib
from rdance.diffusion.sampler import rollout_then_step, sample
from rdance.train import ema as emalib, lora, monitors

ALGOS = ("refl", "rwr")


@flax.struct.dataclass
class FinetuneState:
    step: jax.Array        # int32: updates applied so far
    params: Any            # trainable parameters: the generator's, or LoRA factors
    opt_state: Any
    ema: Any               # EMA of ``params``
    rng: jax.Array         # raw uint32 key data
    rewards: jax.Array     # [W, samples per step] ring buffer of per-sample rewards (monitor)


@dataclasses.dataclass(frozen=True)
class StepSettings:
    algo: str = "refl"
    paradigm: str = "pairwise"        # how the RM is called: pairwise (with references) or pointwise
    num_steps: int = 20               # sampler steps T
    window: int = 5                   # ReFL: k uniform in [T - window, T - grad_steps]
    grad_steps: int = 1               # ReFL: Euler steps the gradient runs back through
    samples_per_prompt: int = 1       # G
    grad_accum: int = 1
    reward_scale: float = 1.0
    refl_loss: str = "linear"         # linear | hinge
    hinge_margin: float = 1.0
    references: str = "sample"        # sample (one reference per sample) | mean (all of them)
    shift: int = 0                    # ReFL: random translation of the scored image, up to this many pixels
    rwr_temperature: float = 1.0
    anchor_weight: float = 0.0
    anchor_drop_captions: bool = True  # the generator's pretraining caption dropout in the anchor
    t_sampling: str = "uniform"
    collapse_eps: float = 0.02
    ema_decay: float = 0.99
    ema_warmup: bool = True
    lora_scale: float | None = None   # None: full fine-tuning

    def check(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo={self.algo!r}: use one of {ALGOS}")
        if not 1 <= self.window <= self.num_steps:
            raise ValueError(f"refl.window={self.window} must be between 1 and refl.num_steps={self.num_steps}")
        if not 1 <= self.grad_steps <= self.window:
            raise ValueError(f"refl.grad_steps={self.grad_steps} must be between 1 and refl.window={self.window}: "
                             "the graded steps start inside the window and end by the last step")
        if self.refl_loss not in ("linear", "hinge"):
            raise ValueError(f"refl.loss={self.refl_loss!r}: use 'linear' or 'hinge'")
        if self.references not in ("sample", "mean"):
            raise ValueError(f"refl.references={self.references!r}: use 'sample' or 'mean'")
        if self.samples_per_prompt < 1 or self.grad_accum < 1:
            raise ValueError(f"data.samples_per_prompt={self.samples_per_prompt} and optim.grad_accum_steps="
                             f"{self.grad_accum} must be at least 1")
        if self.algo == "rwr" and self.samples_per_prompt < 2:
            raise ValueError("rwr weighs a prompt's samples against each other: set "
                             "data.samples_per_prompt >= 2")
        if self.rwr_temperature <= 0:
            raise ValueError(f"rwr.temperature={self.rwr_temperature} must be positive")


def rwr_weights(rewards: jax.Array, temperature: float, eps: float = 1e-6) -> jax.Array:
    """[prompts, G] rewards -> weights G * softmax(z / temperature) per prompt, z the rewards
    normalised within the prompt; a prompt's weights sum to G (mean 1), equal rewards give 1."""
    mean = rewards.mean(axis=-1, keepdims=True)
    std = rewards.std(axis=-1, keepdims=True)
    z = (rewards - mean) / (std + eps)
    return rewards.shape[-1] * jax.nn.softmax(z / temperature, axis=-1)


def random_shift(images: jax.Array, key: jax.Array, ids: jax.Array, max_shift: int) -> jax.Array:
    """Translate each sample [n, ..., H, W, C] (an image, or a clip whose frames all move together)
    by its own random (dy, dx) in [-max_shift, max_shift], edges repeated. Scoring a randomly
    shifted image (an expectation over translations, drawn once per sample and step) keeps ReFL
    from following an RM's gradient into patterns locked to its patch grid, an adversarial
    direction no translation-invariant judge rewards."""
    if max_shift <= 0:
        return images
    lead = images.ndim - 4      # axes between the batch and (H, W, C): a clip's time axis
    pad = ((0, 0),) * (1 + lead) + ((max_shift, max_shift),) * 2 + ((0, 0),)
    padded = jnp.pad(images, pad, mode="edge")
    offsets = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (2,), 0, 2 * max_shift + 1))(ids)
    size = images.shape[1:]
    return jax.vmap(lambda x, o: jax.lax.dynamic_slice(x, (0,) * lead + (o[0], o[1], 0), size))(padded, offsets)


def reward_loss(reward: jax.Array, s: StepSettings) -> jax.Array:
    """Per-sample ReFL loss before scaling: -r, or the hinge relu(margin - r)."""
    if s.refl_loss == "hinge":
        return jax.nn.relu(s.hinge_margin - reward)
    return -reward


RewardFn = Callable[..., jax.Array]
KEY_PURPOSES = ("k", "noise", "reference", "fm", "anchor", "shift")


def batch_constraint(mesh: Mesh):
    """x -> x with its leading (batch) axis split over the mesh's data-parallel axes."""
    def constrain(x):
        spec = P(sharding.BATCH_AXES, *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return constrain


def step_keys(rng: jax.Array) -> dict[str, jax.Array]:
    """One key per purpose from the step's key: the ReFL step index, sampling noise, reference
    choice, flow-matching noise and timesteps, the anchor's, the scored image's translation."""
    return {name: jax.random.fold_in(rng, i) for i, name in enumerate(KEY_PURPOSES)}


def make_micro(gen: genlib.Generator, graphdef, reward_fn: RewardFn, s: StepSettings, mesh: Mesh):
    """The loss and gradient of one micro-batch for ``s.algo``:
    ``micro(params, frozen, rm_params, mb, rows, ids, keys, k) -> (loss, aux, grads)``.

    ``mb`` holds a micro-batch of prompt rows, ``rows`` their indexes in the global batch,
    ``ids`` the global ids of their samples (row * G + j), ``keys`` the step's keys by purpose
    and ``k`` the step's ReFL step index. ``reward_fn`` is ``rm.pairwise_fn`` or
    ``rm.pointwise_fn`` as ``s.paradigm`` says; ``graphdef`` is the trainable module's.
    """
    s.check()
    sigma_values = jnp.asarray(genlib.sigmas(gen, s.num_steps))
    g = s.samples_per_prompt

    constrain = batch_constraint(mesh)

    def model_of(trainable, frozen):
        params = trainable if s.lora_scale is None else lora.merge(frozen["base"], trainable, s.lora_scale)
        return nnx.merge(graphdef, params)

    def per_sample(tree):
        """Rows of prompts -> rows of samples: each prompt's row repeated G times, in place."""
        return jax.tree.map(lambda x: constrain(jnp.repeat(x, g, axis=0)), tree)

    def rewards_of(rm_params, mb, images, ids, key):
        tokens = per_sample(mb["rm"])
        if s.paradigm != "pairwise":
            return reward_fn(rm_params, tokens, images)
        refs = jnp.repeat(mb["refs"], g, axis=0)                 # [n, k, *image_shape]
        k = refs.shape[1]
        if s.references == "sample":
            pick = jax.vmap(lambda i: jax.random.randint(jax.random.fold_in(key, i), (), 0, k))(ids)
            return reward_fn(rm_params, tokens, constrain(refs[jnp.arange(refs.shape[0]), pick]), images)
        per_ref = [reward_fn(rm_params, tokens, constrain(refs[:, j]), images) for j in range(k)]
        return jnp.mean(jnp.stack(per_ref), axis=0)

    def anchor_loss(model, frozen, mb, rows, key):
        x0 = gen.encode(frozen, constrain(mb["anchor_image"]))
        tokens = mb["anchor_gen"]
        if s.anchor_drop_captions:
            tokens = gen.drop_captions(tokens, jax.random.fold_in(key, 2), rows)
        cond = gen.condition(model, frozen, tokens)
        return jnp.mean(genlib.flow_matching_loss(gen, model, cond, x0, key, rows, s.t_sampling))

    def with_anchor(model, frozen, mb, rows, keys, rl_loss):
        if s.anchor_weight <= 0:
            return rl_loss, jnp.float32(0.0)
        anchor = anchor_loss(model, frozen, mb, rows, keys["anchor"])
        return rl_loss + s.anchor_weight * anchor, anchor

    def noise_for(ids, key):
        return constrain(genlib.per_sample_normal(key, ids, gen.latent_shape))

    def refl_micro(params, frozen, rm_params, mb, rows, ids, keys, k):
        def objective(trainable):
            model = model_of(trainable, frozen)
            cond = gen.condition(model, frozen, per_sample(mb["gen"]))
            x0, _ = rollout_then_step(gen.velocity(model, cond), noise_for(ids, keys["noise"]), sigma_values, k,
                                      s.grad_steps)
            images = constrain(gen.decode(frozen, x0))
            scored = constrain(random_shift(images, keys["shift"], ids, s.shift))
            reward = rewards_of(rm_params, mb, scored, ids, keys["reference"])
            rl_loss = s.reward_scale * jnp.mean(reward_loss(reward, s))
            loss, anchor = with_anchor(model, frozen, mb, rows, keys, rl_loss)
            aux = dict(reward=reward, rl_loss=rl_loss, anchor_loss=anchor,
                       images=jax.lax.stop_gradient(images))
            return loss, aux
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return loss, aux, grads

    def rwr_micro(params, frozen, rm_params, mb, rows, ids, keys, k):
        del k
        still = model_of(jax.lax.stop_gradient(params), frozen)
        tokens = per_sample(mb["gen"])
        cond = gen.condition(still, frozen, tokens)
        x = jax.lax.stop_gradient(sample(gen.velocity(still, cond), noise_for(ids, keys["noise"]), sigma_values))
        images = constrain(gen.decode(frozen, x))
        reward = jax.lax.stop_gradient(rewards_of(rm_params, mb, images, ids, keys["reference"]))
        weights = rwr_weights(reward.reshape(-1, g), s.rwr_temperature).reshape(-1)

        def objective(trainable):
            model = model_of(trainable, frozen)
            fm = genlib.flow_matching_loss(gen, model, gen.condition(model, frozen, tokens), x,
                                           keys["fm"], ids, s.t_sampling)
            rl_loss = jnp.mean(weights * fm)
            loss, anchor = with_anchor(model, frozen, mb, rows, keys, rl_loss)
            return loss, dict(reward=reward, rl_loss=rl_loss, anchor_loss=anchor, images=images,
                              weight_max=weights.reshape(-1, g).max(axis=-1))
        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return loss, aux, grads

    return refl_micro if s.algo == "refl" else rwr_micro


def make_step(gen: genlib.Generator, graphdef, reward_fn: RewardFn, s: StepSettings,
              tx: optax.GradientTransformation, schedule: optax.Schedule, mesh: Mesh):
    """The pure step ``step(state, batch, frozen, rm_params) -> (state, metrics)``."""
    micro_fn = make_micro(gen, graphdef, reward_fn, s, mesh)
    g = s.samples_per_prompt
    constrain = batch_constraint(mesh)

    def step(state: FinetuneState, batch, frozen, rm_params) -> tuple[FinetuneState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        keys = step_keys(rng)
        k = jax.random.randint(keys["k"], (), s.num_steps - s.window, s.num_steps - s.grad_steps + 1)
        prompts = batch["prompt"].shape[0]
        m = s.grad_accum
        micro = jax.tree.map(lambda x: x.reshape(m, prompts // m, *x.shape[1:]), batch)
        rows = jnp.arange(prompts, dtype=jnp.int32).reshape(m, prompts // m)

        def body(acc, xs):
            mb, r = xs
            mb = jax.tree.map(constrain, mb)
            ids = (r[:, None] * g + jnp.arange(g, dtype=jnp.int32)).reshape(-1)
            loss, aux, grads = micro_fn(state.params, frozen, rm_params, mb, r, ids, keys, k)
            images = aux.pop("images")
            if g > 1:
                aux["diversity"] = monitors.diversity(images.reshape(-1, g, *images.shape[1:]))
            return jax.tree.map(jnp.add, acc, grads), dict(aux, loss=loss)

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        grads, aux = jax.lax.scan(body, zeros, (micro, rows))
        grads = jax.tree.map(lambda x: x / m, grads)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = emalib.update(state.ema, params, emalib.decay_at(state.step, s.ema_decay, s.ema_warmup))

        reward = aux["reward"].reshape(-1)
        window = monitors.window_push(state.rewards, state.step, reward)
        loss = jnp.mean(aux["loss"])
        metrics = {"loss": loss, "rl_loss": jnp.mean(aux["rl_loss"]), "grad_norm": grad_norm,
                   "learning_rate": schedule(state.step), "reward/mean": reward.mean(),
                   "reward/std": reward.std(), "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
        metrics.update({f"reward/{k_}": v for k_, v in monitors.window_stats(window, state.step).items()})
        if s.anchor_weight > 0:
            metrics["anchor_loss"] = jnp.mean(aux["anchor_loss"])
        if g > 1:
            metrics["reward/collapse_frac"] = monitors.collapse_fraction(reward.reshape(-1, g), s.collapse_eps)
            metrics["diversity"] = jnp.mean(aux["diversity"])
        if s.algo == "refl":
            metrics["refl_step"] = k.astype(jnp.float32)
        else:
            metrics["rwr/max_weight"] = jnp.mean(aux["weight_max"])
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema=ema,
                                  rewards=window)
        return new_state, metrics

    return step
