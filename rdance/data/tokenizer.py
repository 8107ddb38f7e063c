"""A word-level tokenizer with a Qwen2-style chat template, for models trained from scratch.

Saved in the Hugging Face folder layout (tokenizer.json + tokenizer_config.json), so a model
trained from scratch is loaded through the same ``AutoTokenizer`` path as a real checkpoint.
"""
from __future__ import annotations

import os
from typing import Iterable

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# The names transformers' InternVL processor reads from the tokenizer.
IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
SPECIAL = ["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>", *IMAGE_TOKENS.values()]


def build_word_tokenizer(corpus: Iterable[str], out_dir: str) -> str:
    """Every word and punctuation mark of ``corpus`` becomes one token; returns ``out_dir``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    roles = ["system", "user", "assistant"]  # the chat template writes these
    words = sorted({w for text in [*corpus, *roles] for w, _ in splitter.pre_tokenize_str(text)})
    vocab = {token: i for i, token in enumerate(SPECIAL + [w for w in words if w not in SPECIAL])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = splitter
    core.add_special_tokens(SPECIAL)  # matched whole, before the splitter sees their '<|'
    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", pad_token="<|endoftext|>", eos_token="<|im_end|>",
        additional_special_tokens=SPECIAL[2:], extra_special_tokens=IMAGE_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
