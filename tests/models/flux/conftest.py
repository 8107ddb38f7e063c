"""A tiny random FLUX pipeline (transformer, VAE, CLIP, T5, tokenizers, scheduler) written with
diffusers' save_pretrained, once per session: every test loads it the way users load FLUX.1-dev."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

LETTERS = "abcdefghijklmnopqrstuvwxyz"
CLIP_MAX_LENGTH = 16


def clip_tokenizer(folder):
    """A character-level CLIP BPE tokenizer: no merges, one token per letter."""
    vocab = {c: i for i, c in enumerate(LETTERS)}
    vocab.update({c + "</w>": len(LETTERS) + i for i, c in enumerate(LETTERS)})
    vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    folder.mkdir()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                      model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + c, -1.0) for c in LETTERS] + [(c, -2.0) for c in LETTERS]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", extra_ids=0)


def tiny_components(tmp):
    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 6, 6))
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, shift_factor=0.1159, scaling_factor=0.3611)
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=54, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH, bos_token_id=52, eos_token_id=53, pad_token_id=53))
    t5 = transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=55, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
        relative_attention_max_distance=16, decoder_start_token_id=0))
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)
    return diffusers.FluxPipeline(
        scheduler=scheduler, vae=vae.eval(), text_encoder=clip.eval(), tokenizer=clip_tokenizer(tmp / "clip_vocab"),
        text_encoder_2=t5.eval(), tokenizer_2=t5_tokenizer(), transformer=transformer.eval())


@pytest.fixture(scope="session")
def flux_pipe(tmp_path_factory):
    """(folder, torch FluxPipeline) for the tiny random model."""
    tmp = tmp_path_factory.mktemp("flux")
    pipe = tiny_components(tmp)
    pipe.save_pretrained(tmp / "pipeline")
    return tmp / "pipeline", pipe


@pytest.fixture(scope="session")
def rd_pipe(flux_pipe):
    from rdance.diffusion.flux_generator import FluxGenerator
    return FluxGenerator.from_pretrained(flux_pipe[0], height=16, width=16, vae_remat="none")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
