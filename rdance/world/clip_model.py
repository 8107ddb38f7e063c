"""A small CLIP for the synthetic world, trained contrastively on rendered scenes and their prompts,
saved as a transformers ``CLIPModel`` folder (with tokenizer and preprocessor_config.json) so
``rdance.run.evaluate --clip`` and :class:`rdance.reward.clip_score.CLIPScorer` load it as they
load PickScore.

Each batch holds ``batch_size / 2`` random scenes, each drawn faithfully and with one deliberate
mistake (rdance.world.render), every image captioned by what was drawn: the near misses are hard
negatives, so the embedding has to see colour, shape, count and position. The loss is CLIP's
symmetric InfoNCE over the batch with a learnt temperature (logit scale capped at log 100).

:func:`judge_agreement` measures the result against the programmatic judge: on judged pairs whose
verdicts differ (rdance.world.pairs), the fraction where the CLIP score ranks the two images as
the judge does (chance: 0.5).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from rdance.data.tokenizer import build_word_tokenizer
from rdance.models.clip import CLIPConfig, CLIPModel, CLIPVisionConfig, export_clip_model
from rdance.models.flux.clip import CLIPTextConfig
from rdance.reward.clip_score import PREPROCESSOR_FILE, CLIPScorer, ImagePreprocessor
from rdance.world.generator import prompt_words
from rdance.world.pairs import PreferencePairs
from rdance.world.prompts import sample_scene
from rdance.world.render import mistaken_scene, possible_mistakes, render

EOS = "<|im_end|>"
MAX_LOGIT_SCALE = float(np.log(100.0))


@dataclasses.dataclass(frozen=True)
class WorldCLIPConfig:
    image_size: int = 32
    patch_size: int = 4
    width: int = 64               # hidden size of both towers
    layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    max_tokens: int = 16
    steps: int = 400
    batch_size: int = 64          # half faithful renders, half their near misses
    learning_rate: float = 1e-3
    warmup_steps: int = 20
    seed: int = 0
    # This share of the world's prompts (by a hash of the text, see is_heldout) never appears as a
    # training caption, so the agreement can be measured on prompts the model has not seen.
    heldout_share: float = 0.0


def is_heldout(prompt: str, share: float) -> bool:
    """Whether ``prompt`` is in the held-out ``share`` of prompts: a fixed split by the text's CRC32."""
    return zlib.crc32(prompt.encode()) % 1000 < share * 1000


def write_tokenizer(folder: str) -> str:
    """The world's word tokenizer (as the world generator's) that appends ``<|im_end|>`` to every
    prompt: the CLIP text tower pools at that end token."""
    from tokenizers import Tokenizer, processors
    build_word_tokenizer([" ".join(prompt_words())], folder)
    path = os.path.join(folder, "tokenizer.json")
    core = Tokenizer.from_file(path)
    core.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, core.token_to_id(EOS))])
    core.save(path)
    return folder


def write_preprocessor(folder: str, image_size: int) -> str:
    """preprocessor_config.json as CLIPImageProcessor writes it, at the world's image size."""
    pre = ImagePreprocessor()
    config = dict(image_processor_type="CLIPImageProcessor", do_resize=True, size={"shortest_edge": image_size},
                  resample=3, do_center_crop=True, crop_size={"height": image_size, "width": image_size},
                  do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True,
                  image_mean=list(pre.image_mean), image_std=list(pre.image_std))
    with open(os.path.join(folder, PREPROCESSOR_FILE), "w") as f:
        json.dump(config, f, indent=2)
    return folder


def model_config(c: WorldCLIPConfig, vocab_size: int, eos_token_id: int) -> CLIPConfig:
    if eos_token_id == 2:   # CLIP reads eos_token_id == 2 as the legacy argmax pooling
        raise ValueError("the world tokenizer's end token must not have id 2")
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=c.width, intermediate_size=2 * c.width,
                          num_hidden_layers=c.layers, num_attention_heads=c.heads,
                          max_position_embeddings=c.max_tokens, eos_token_id=eos_token_id, attention="xla")
    vision = CLIPVisionConfig(hidden_size=c.width, intermediate_size=2 * c.width, num_hidden_layers=c.layers,
                              num_attention_heads=c.heads, image_size=c.image_size, patch_size=c.patch_size,
                              attention="xla")
    return CLIPConfig(text=text, vision=vision, projection_dim=c.projection_dim)


def batch(rng: np.random.Generator, size: int, image_size: int,
          heldout_share: float = 0.0) -> tuple[list[str], np.ndarray]:
    """``size`` captioned renders: each scene faithfully and with one mistake, in adjacent rows;
    no caption is a held-out prompt."""
    prompts, images = [], []
    for _ in range(size // 2):
        while True:
            scene = sample_scene(rng)
            near = mistaken_scene(scene, str(rng.choice(possible_mistakes(scene))), rng)
            if not (is_heldout(scene.prompt, heldout_share) or is_heldout(near.prompt, heldout_share)):
                break
        for drawn in (scene, near):
            prompts.append(drawn.prompt)
            images.append(render(drawn, image_size, rng))
    return prompts, np.stack(images)


def contrastive_loss(model: CLIPModel, pixels, ids, mask):
    """CLIP's symmetric InfoNCE: image i's caption is text i, and the other way round."""
    image, text = model.image_embeds(pixels), model.text_embeds(ids, mask)
    logits = jnp.exp(jnp.minimum(model.logit_scale[...], MAX_LOGIT_SCALE)) * image @ text.T
    labels = jnp.arange(logits.shape[0])
    per_image = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    per_text = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return (per_image.mean() + per_text.mean()) / 2, accuracy


def train(c: WorldCLIPConfig, out_dir: str, log: Callable[[int, dict], None] | None = None) -> str:
    """Train a world CLIP for ``c.steps`` steps and write it to ``out_dir`` (a CLIPModel folder)."""
    from transformers import AutoTokenizer  # the word-level tokenizer files, no model code
    if c.steps < 0:
        raise ValueError(f"steps={c.steps}: use 0 (an untrained model, the baseline) or more")
    if not 0.0 <= c.heldout_share < 0.9:
        raise ValueError(f"heldout_share={c.heldout_share}: use a share in [0, 0.9)")
    if c.batch_size < 2 or c.batch_size % 2:
        raise ValueError(f"batch_size={c.batch_size}: use an even number of at least 2 (faithful + near miss)")
    os.makedirs(out_dir, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(write_tokenizer(out_dir))
    write_preprocessor(out_dir, c.image_size)
    cfg = model_config(c, vocab_size=-(-len(tokenizer) // 16) * 16, eos_token_id=tokenizer.convert_tokens_to_ids(EOS))
    model = CLIPModel(cfg, rngs=nnx.Rngs(c.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    total = max(c.steps, 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, min(c.warmup_steps, total - 1), total)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = tx.init(params)
    preprocess = ImagePreprocessor.from_pretrained(out_dir)

    @jax.jit
    def step(params, opt_state, pixels, ids, mask):
        def loss_fn(p):
            return contrastive_loss(nnx.merge(graphdef, p), pixels, ids, mask)
        (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, accuracy

    rng = np.random.default_rng(c.seed)
    started, loss = time.time(), float("nan")
    for n in range(c.steps):
        prompts, images = batch(rng, c.batch_size, c.image_size, c.heldout_share)
        tokens = tokenizer(prompts, padding="max_length", max_length=c.max_tokens, truncation=True)
        params, opt_state, loss, accuracy = step(params, opt_state, preprocess(images),
                                                 np.asarray(tokens["input_ids"], np.int32),
                                                 np.asarray(tokens["attention_mask"], np.int32))
        if log is not None and (n % 50 == 0 or n == c.steps - 1):
            log(n, dict(loss=float(loss), accuracy=float(accuracy), seconds=time.time() - started))
    logging.info("world CLIP: %d steps in %.1f s, last loss %.3f", c.steps, time.time() - started, float(loss))
    export_clip_model(nnx.to_pure_dict(params), cfg, out_dir, bos_token_id=None, pad_token_id=tokenizer.pad_token_id)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@dataclasses.dataclass(frozen=True)
class Agreement:
    agree: int
    pairs: int
    ties: int

    @property
    def rate(self) -> float:
        """Ties count half, as a coin toss would."""
        return (self.agree + 0.5 * self.ties) / self.pairs

    @property
    def stderr(self) -> float:
        return float(np.sqrt(0.25 / self.pairs))   # of the rate under chance (0.5)


def judge_agreement(scorer: CLIPScorer, num_pairs: int, seed: int = 1234, image_size: int = 32,
                    keep: Callable[[str], bool] | None = None) -> Agreement:
    """How often the CLIP score ranks a judged pair as the judge does: ``num_pairs`` pairs of
    renders of one prompt whose judge scores differ (rdance.world.pairs, no label noise), the
    first ones whose prompt ``keep`` accepts (None: all)."""
    pairs = PreferencePairs(200 * num_pairs, seed, size=image_size)
    records = []
    for i in range(len(pairs)):
        if len(records) == num_pairs:
            break
        record = pairs[i]
        if keep is None or keep(record.prompt):
            records.append(record)
    else:
        raise ValueError(f"fewer than {num_pairs} of {len(pairs)} pairs have a prompt to keep")
    prompts: Sequence[str] = [r.prompt for r in records for _ in range(2)]
    scores = scorer.score(np.stack([im for r in records for im in r.images]), prompts).reshape(num_pairs, 2)
    better = np.array([r.label for r in records])
    margin = scores[np.arange(num_pairs), better] - scores[np.arange(num_pairs), 1 - better]
    return Agreement(agree=int((margin > 0).sum()), pairs=num_pairs, ties=int((margin == 0).sum()))
