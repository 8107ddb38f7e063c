"""Tiny random Wan pipelines written with diffusers' save_pretrained, once per session: a
WanPipeline (text to video) and a WanImageToVideoPipeline (CLIP image encoder and processor
included), each with the scheduler the released Wan-AI *-Diffusers folders ship (UniPC over
flow sigmas) or FlowMatchEuler with a shift. Every test loads them the way users load Wan 2.1."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from tests.models.flux.conftest import t5_tokenizer  # noqa: E402

TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32,
            ffn_dim=64, num_layers=2, rope_max_seq_len=32)
SCHEDULERS = {
    "unipc": lambda: diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                       flow_shift=3.0),
    "euler": lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0),
}


def _perturbed(model):
    """Every parameter nudged, so zero- and one-initialised tables are random too."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _common():
    vae = _perturbed(diffusers.AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                                                latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 0.5, 1.5, 1.0]))
    umt5 = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=56, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8, relative_attention_max_distance=16)).eval()
    return dict(vae=vae, text_encoder=umt5, tokenizer=t5_tokenizer())


def make_t2v(scheduler: str):
    torch.manual_seed(0)
    transformer = _perturbed(diffusers.WanTransformer3DModel(in_channels=4, out_channels=4, **TINY))
    return diffusers.WanPipeline(transformer=transformer, scheduler=SCHEDULERS[scheduler](), **_common())


def make_i2v(scheduler: str):
    torch.manual_seed(1)
    transformer = _perturbed(diffusers.WanTransformer3DModel(in_channels=12, out_channels=4, image_dim=32,
                                                             added_kv_proj_dim=32, **TINY))
    encoder = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=28,
        patch_size=14, hidden_act="gelu")).eval()
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return diffusers.WanImageToVideoPipeline(transformer=transformer, scheduler=SCHEDULERS[scheduler](),
                                             image_encoder=encoder, image_processor=processor, **_common())


@pytest.fixture(scope="session")
def wan_pipes(tmp_path_factory):
    """{(task, scheduler): (folder, torch pipeline)} for task in t2v, i2v and both schedulers."""
    out = {}
    for task, make in (("t2v", make_t2v), ("i2v", make_i2v)):
        for name in SCHEDULERS:
            pipe = make(name)
            folder = tmp_path_factory.mktemp(f"wan_{task}_{name}") / "pipeline"
            pipe.save_pretrained(folder)
            out[task, name] = folder, pipe
    return out


def make_train_t2v():
    """A leaner WanPipeline for the fine-tuning tests: one transformer block and a VAE of three
    levels at width 4 (the same 4x temporal, here 4x spatial, factors), so a step compiles faster."""
    torch.manual_seed(2)
    common = _common()
    common["vae"] = _perturbed(diffusers.AutoencoderKLWan(
        base_dim=4, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 0.5, 1.5, 1.0]))
    transformer = _perturbed(diffusers.WanTransformer3DModel(in_channels=4, out_channels=4, **dict(TINY, num_layers=1)))
    return diffusers.WanPipeline(transformer=transformer, scheduler=SCHEDULERS["unipc"](), **common)


@pytest.fixture(scope="session")
def wan_train_folder(tmp_path_factory):
    """The folder of :func:`make_train_t2v`'s pipeline (diffusers' save_pretrained)."""
    folder = tmp_path_factory.mktemp("wan_train") / "pipeline"
    make_train_t2v().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def first_frame():
    """A 32x16 RGB image (the video's size, so both pipelines resize nothing)."""
    return np.random.default_rng(5).integers(0, 256, (32, 16, 3), dtype=np.uint8)
