"""What the reward model is asked, and how the question and its answer become tokens.

Pairwise (the paper's reference paradigm): image 1 is the reference, image 2 the candidate,
then the prompt, the criteria, "Is image 2 better than image 1?". Pointwise: one image, "Does
the image meet the criteria?". The reward is P("yes") at the first answer position, so every
answer format starts with the decision except ``rationale_first`` (trained, never read at RL).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

CRITERIA = {
    "alignment": ("Image-text alignment: every object in the prompt is present with the right "
                  "colour, shape and count, and stated positions are respected."),
    "aesthetics": ("Aesthetics: pleasing composition, colour harmony, lighting and fine detail, "
                   "free of noise and artifacts."),
    "plausibility": ("Plausibility: physically and anatomically coherent content, consistent "
                     "geometry and lighting, no distorted objects."),
}
FORMATS = ("none", "decision_first", "rationale_first")
_INSTRUCTION = {
    "none": 'Answer "yes" or "no".',
    "decision_first": 'Answer "yes" or "no", then give the reason.',
    "rationale_first": 'Give the reason, then answer "yes" or "no".',
}


class TemplateError(ValueError):
    pass


def criteria_text(criteria: str) -> str:
    """A preset's text (``alignment``, ``aesthetics``, ``plausibility``) or the user's own."""
    return CRITERIA.get(criteria, criteria)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise TemplateError(f"answer format {fmt!r}; use one of {FORMATS}")


def pairwise_question(prompt: str, criteria: str, fmt: str, image_1: str, image_2: str) -> str:
    _check_format(fmt)
    return (f"Image 1: {image_1}\nImage 2: {image_2}\n"
            f'Please evaluate two images generated from the prompt: "{prompt}". '
            f"Is image 2 better than image 1?\nCriteria: {criteria_text(criteria)}\n{_INSTRUCTION[fmt]}")


def pointwise_question(prompt: str, criteria: str, fmt: str, image: str) -> str:
    _check_format(fmt)
    return (f"Image: {image}\n"
            f'Please evaluate an image generated from the prompt: "{prompt}". '
            f"Does the image meet the criteria?\nCriteria: {criteria_text(criteria)}\n{_INSTRUCTION[fmt]}")


def answer(yes: bool, rationale: str, fmt: str) -> str:
    _check_format(fmt)
    decision = "yes" if yes else "no"
    if fmt == "none" or not rationale:
        return decision
    if fmt == "decision_first":
        return f"{decision}. {rationale}"
    return f"{rationale} So the answer is {decision}"


def fill_rationale(rationale: str, candidate_preferred: bool) -> str:
    """Name the images in a rationale written with {preferred}/{other} placeholders."""
    preferred, other = ("image 2", "image 1") if candidate_preferred else ("image 1", "image 2")
    return rationale.replace("{preferred}", preferred).replace("{other}", other)


@dataclasses.dataclass(frozen=True)
class Encoded:
    prompt_ids: np.ndarray   # [P] chat-templated question, image tokens expanded
    answer_ids: np.ndarray   # [A] answer tokens and the end-of-turn token ([] when unknown)


class TokenTemplate:
    """Turns questions and answers into token ids with the checkpoint's own chat template.

    Each image placeholder becomes ``<img>`` + ``tokens`` x ``<IMG_CONTEXT>`` + ``</img>`` as
    transformers' InternVL processor writes it; a video becomes one such block per frame.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        names = ("context_image_token", "start_image_token", "end_image_token")
        missing = [n for n in names if not getattr(tokenizer, n, None)]
        if missing:
            raise TemplateError(f"the tokenizer defines no {', '.join(missing)}; an InternVL "
                                "checkpoint's tokenizer_config.json lists them in extra_special_tokens")
        self.placeholder = tokenizer.context_image_token
        self.context_id = tokenizer.convert_tokens_to_ids(self.placeholder)
        self.start_id = tokenizer.convert_tokens_to_ids(tokenizer.start_image_token)
        self.end_id = tokenizer.convert_tokens_to_ids(tokenizer.end_image_token)
        self.yes_id, self.no_id = self._single_token("yes"), self._single_token("no")
        self.end_ids = self._ids(tokenizer.eos_token) if tokenizer.eos_token else []

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def _single_token(self, word: str) -> int:
        ids = self._ids(word)
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise TemplateError(
                f"the tokenizer writes {word!r} as {ids}, not as one known token, so P({word!r}) "
                "is ambiguous; use a checkpoint whose vocabulary has the plain word")
        return ids[0]

    def image_marks(self, frames_per_image: Sequence[int]) -> list[str]:
        """Placeholder text for each image (a clip of T frames: one line per frame)."""
        return [self.placeholder if t == 1 else
                "\n".join(f"Frame{i + 1}: {self.placeholder}" for i in range(t))
                for t in frames_per_image]

    def encode(self, question: str, image_tokens: Sequence[int], answer_text: str | None = None,
               history: Sequence[tuple[str, str]] = ()) -> Encoded:
        """Tokens of ``history`` turns (in-context examples) then the question, ready to answer.

        ``image_tokens`` gives, for each placeholder in order, how many features it stands for
        (tiles x tokens per tile).
        """
        messages = []
        for q, a in history:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        pieces = text.split(self.placeholder)
        if len(pieces) - 1 != len(image_tokens):
            raise TemplateError(f"the question holds {len(pieces) - 1} image placeholders but "
                                f"{len(image_tokens)} images were given")
        ids: list[int] = self._ids(pieces[0])
        for count, piece in zip(image_tokens, pieces[1:]):
            ids += [self.start_id] + [self.context_id] * count + [self.end_id] + self._ids(piece)
        answer_ids = [] if answer_text is None else self._ids(answer_text) + self.end_ids
        if answer_text and answer_text.split()[0].rstrip(".") in ("yes", "no") and \
                answer_ids[0] not in (self.yes_id, self.no_id):
            raise TemplateError(f"the answer {answer_text[:20]!r} does not start with the yes/no token")
        return Encoded(np.asarray(ids, np.int32), np.asarray(answer_ids, np.int32))


@dataclasses.dataclass(frozen=True)
class Rows:
    """Fixed-shape model rows: [pad ... prompt | answer ... pad]; the prompt ends at ``P - 1``."""
    input_ids: np.ndarray      # [rows, P + A] int32
    attention_mask: np.ndarray  # [rows, P + A] int32
    targets: np.ndarray        # [rows, P + A] int32: the token each position should predict
    target_kind: np.ndarray    # [rows, P + A] int8: 0 none, 1 decision, 2 other answer tokens


def pack(encoded: Sequence[Encoded], max_prompt: int, max_answer: int, pad_id: int,
         decision_ids: tuple[int, int]) -> Rows:
    """Left-pad prompts to ``max_prompt`` and right-pad answers to ``max_answer``.

    Left padding puts every row's answer position at the same column, ``max_prompt - 1``, which
    is where the reward P("yes") is read.
    """
    rows = len(encoded)
    length = max_prompt + max_answer
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    targets = np.zeros((rows, length), np.int32)
    kind = np.zeros((rows, length), np.int8)
    for r, e in enumerate(encoded):
        p, a = len(e.prompt_ids), len(e.answer_ids)
        if p > max_prompt:
            raise TemplateError(f"the question is {p} tokens but rm.max_prompt_tokens={max_prompt}; "
                                "raise it or shorten the prompt/criteria")
        if a > max_answer:
            raise TemplateError(f"the answer is {a} tokens but rm.max_answer_tokens={max_answer}; "
                                "raise it or shorten the rationales")
        ids[r, max_prompt - p:max_prompt] = e.prompt_ids
        ids[r, max_prompt:max_prompt + a] = e.answer_ids
        mask[r, max_prompt - p:max_prompt + a] = 1
        # Position t predicts token t + 1: the last prompt column predicts the first answer token.
        targets[r, max_prompt - 1:max_prompt - 1 + a] = e.answer_ids
        kind[r, max_prompt - 1:max_prompt - 1 + a] = 2
        decision_at = [i for i, t in enumerate(e.answer_ids) if t in decision_ids]
        if decision_at:
            # The decision of a rationale-first answer is its last yes/no token.
            kind[r, max_prompt - 1 + (decision_at[0] if e.answer_ids[0] in decision_ids else decision_at[-1])] = 1
    return Rows(ids, mask, targets, kind)
