"""Preference records -> fixed-shape model rows for each reward paradigm.

pairwise    two rows per pair, one per order: (reference=A, candidate=B) answers "yes" iff B won,
            (reference=B, candidate=A) iff A won. Training both orders balances the labels and
            trains position bias away.
pointwise   two rows per pair, winner then loser, each alone: "does it meet the criteria?".
regressive  the pointwise rows without an answer; a scalar head scores them.
caption     one row per single-image record, "Describe the image." answered by the record's
            prompt, or, for a record whose criteria is "question", 'Does the image show "PROMPT"?'
            answered yes (label 1) or no: the VLM pretraining a from-scratch smoke RM starts from.

A clip [T, H, W, 3] is first cut to the ``video_frames`` frames its ``video_sampling`` picks
(rdance.reward.video), the frames a scored clip is cut to as well, then written one
"FrameN: <image>" line per frame.

Every row also carries ``target``, the P(yes) its decision is trained towards (1 or 0; 0.5 for
both rows of a tie, whose answer text is "yes" but whose decision token is trained on yes and no
alike), and ``weight``, its record's weight (used by the loss only with rm.row_weights).
"""
from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from rdance.data.records import PreferenceRecord
from rdance.reward import templates as T, video
from rdance.reward.model import tiles_per_image

PARADIGMS = ("pairwise", "pointwise", "regressive", "caption")
CAPTION_QUESTION = "Image: {image}\nDescribe the image."
GROUNDING_QUESTION = 'Image: {image}\nDoes the image show "{prompt}"? Answer "yes" or "no".'

ANSWER_FORMATS = (*T.FORMATS, "mixed")


@dataclasses.dataclass(frozen=True)
class RowSpec:
    paradigm: str = "pairwise"
    answer_format: str = "none"         # or decision_first, rationale_first, mixed
    criteria: str = "alignment"         # a preset name or the text itself; a record's own wins
    max_prompt_tokens: int = 128
    max_answer_tokens: int = 64
    image_size: int = 448               # the vision tower's tile size
    max_tiles: int = 1
    tokens_per_tile: int = 256
    video_frames: int = 0               # frames of each clip the RM sees (0: all), picked by
    video_sampling: str = "uniform"     # rdance.reward.video's policy, in training and scoring

    def __post_init__(self):
        video.check(self.video_frames, self.video_sampling)
        if self.paradigm not in PARADIGMS:
            raise ValueError(f"rm.paradigm={self.paradigm!r}; use one of {PARADIGMS}")
        if self.answer_format not in ANSWER_FORMATS:
            raise ValueError(f"rm.answer_format={self.answer_format!r}; use one of {ANSWER_FORMATS}")

    def eval_format(self) -> str:
        """The format read at scoring time: the reward is the first answer token, so a model
        trained with rationales is asked for the decision first."""
        return "none" if self.answer_format == "none" else "decision_first"

    def frames_of(self, image, axis: int = 0):
        """A clip's frames this RM sees (``axis``: its time axis, 1 in a batch); a still image
        (or a batch of them) as it is."""
        if image.ndim - axis != 4:
            return image
        return video.sample(image, self.video_frames, self.video_sampling, axis)


class RowBuilder:
    def __init__(self, template: T.TokenTemplate, spec: RowSpec):
        self.template, self.spec = template, spec

    def _image_tokens(self, image: np.ndarray) -> list[int]:
        if image.ndim == 4:  # a clip: one tile per frame, as InternVL's video processor does
            return [self.spec.tokens_per_tile] * image.shape[0]
        tiles = tiles_per_image(image.shape[0], image.shape[1], self.spec.image_size, self.spec.max_tiles)
        return [tiles * self.spec.tokens_per_tile]

    def _format(self, record: PreferenceRecord, training: bool) -> str:
        if not training:
            return self.spec.eval_format()
        if self.spec.answer_format == "mixed":  # half the prompts each way, fixed per prompt
            return T.FORMATS[1 + zlib.crc32(record.prompt.encode()) % 2]
        return self.spec.answer_format

    def encode_pairwise(self, prompt: str, criteria: str, reference: np.ndarray, candidate: np.ndarray,
                        fmt: str, yes: bool | None = None, rationale: str = "") -> T.Encoded:
        marks = self.template.image_marks([_frames(reference), _frames(candidate)])
        question = T.pairwise_question(prompt, criteria, fmt, *marks)
        answer = None if yes is None else T.answer(yes, T.fill_rationale(rationale, yes), fmt)
        return self.template.encode(question, self._image_tokens(reference) + self._image_tokens(candidate), answer)

    def encode_pointwise(self, prompt: str, criteria: str, image: np.ndarray, fmt: str,
                         yes: bool | None = None) -> T.Encoded:
        question = T.pointwise_question(prompt, criteria, fmt, *self.template.image_marks([_frames(image)]))
        answer = None if yes is None else T.answer(yes, "", fmt)
        return self.template.encode(question, self._image_tokens(image), answer)

    def caption_rows(self, record: PreferenceRecord) -> dict[str, np.ndarray]:
        image = self.spec.frames_of(record.images[0])
        mark = self.template.image_marks([_frames(image)])[0]
        if record.criteria == "question":
            question = GROUNDING_QUESTION.format(image=mark, prompt=record.prompt)
            answer = "yes" if record.label == 1 else "no"
        else:
            question, answer = CAPTION_QUESTION.format(image=mark), record.prompt
        encoded = self.template.encode(question, self._image_tokens(image), answer)
        rows = T.pack([encoded], self.spec.max_prompt_tokens, self.spec.max_answer_tokens,
                      self.template.tokenizer.pad_token_id, ())
        return {"input_ids": rows.input_ids, "attention_mask": rows.attention_mask,
                "targets": rows.targets, "target_kind": rows.target_kind,
                "images": image.reshape(-1, *image.shape[-3:]), "yes": np.ones((1,), np.int32),
                "target": np.ones((1,), np.float32), "weight": np.full((1,), record.weight, np.float32)}

    def __call__(self, record: PreferenceRecord, training: bool = True) -> dict[str, np.ndarray]:
        if self.spec.paradigm == "caption":
            return self.caption_rows(record)
        if record.kind != "pair":
            raise ValueError(f"the {self.spec.paradigm} reward model trains on pairs; got a "
                             f"single-image record for prompt {record.prompt!r}")
        criteria = record.criteria or self.spec.criteria
        fmt = self._format(record, training)
        with_answer = training and self.spec.paradigm != "regressive"
        record = dataclasses.replace(record, images=tuple(self.spec.frames_of(im) for im in record.images))
        a, b = record.images
        if self.spec.paradigm == "pairwise":
            yes = [True, True] if record.tie else [record.label == 1, record.label == 0]   # b won; a won
            encoded = [self.encode_pairwise(record.prompt, criteria, ref, cand, fmt,
                                            y if with_answer else None, record.rationale)
                       for (ref, cand), y in zip(((a, b), (b, a)), yes)]
            images = [a, b, b, a]
        else:
            winner, loser = record.images[record.label], record.images[1 - record.label]
            yes = [True, False]
            fmt = "none"  # a pair's rationale compares two images; a single image has none
            encoded = [self.encode_pointwise(record.prompt, criteria, im, fmt, y if with_answer else None)
                       for im, y in zip((winner, loser), yes)]
            images = [winner, loser]
        rows = T.pack(encoded, self.spec.max_prompt_tokens, self.spec.max_answer_tokens,
                      self.template.tokenizer.pad_token_id, (self.template.yes_id, self.template.no_id))
        target = np.full(2, 0.5, np.float32) if record.tie else np.asarray(yes, np.float32)
        frames = np.concatenate([im.reshape(-1, *im.shape[-3:]) for im in images])
        return {"input_ids": rows.input_ids, "attention_mask": rows.attention_mask,
                "targets": rows.targets, "target_kind": rows.target_kind,
                "images": frames, "yes": np.asarray(yes, np.int32), "target": target,
                "weight": np.full(2, record.weight, np.float32)}


def _frames(image: np.ndarray) -> int:
    return image.shape[0] if image.ndim == 4 else 1
