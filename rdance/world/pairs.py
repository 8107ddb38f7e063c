"""Preference data from the synthetic world, labelled by the judge (with optional label noise).

Rationales are written from the judge's findings with ``{preferred}`` / ``{other}`` placeholders;
the reward templates fill them with "image 1" / "image 2" for the order they present.
"""
from __future__ import annotations

import numpy as np

from rdance.data.records import PreferenceRecord
from rdance.world.judge import judge
from rdance.world.prompts import KINDS, sample_scene
from rdance.world.render import MISTAKES, mistaken_scene, possible_mistakes, render, render_variant

ALIGNMENT_CRITERIA = ("Image-text alignment: every object in the prompt is present with the right "
                      "colour, shape and count, and stated positions are respected.")


def rationale_of(better, worse) -> str:
    failed = [text for text, ok in worse.checks if not ok]
    better_failed = [text for text, ok in better.checks if not ok]
    words = (f"{{preferred}} passes {sum(ok for _, ok in better.checks)} of {len(better.checks)} "
             f"checks; {{other}} fails: {'; '.join(failed)}.")
    if better_failed:
        words += f" {{preferred}} is not perfect either: {'; '.join(better_failed)}."
    return words


def normalised_mistake_weights(weights: dict[str, float] | None, known=MISTAKES) -> dict[str, float] | None:
    """A weight for every kind of mistake in ``known`` (a name left out weighs 1), or None when
    all weigh alike: then pairs are drawn uniformly, the same stream as without weights."""
    if weights is None:
        return None
    unknown = set(weights) - set(known)
    if unknown:
        raise ValueError(f"mistake weights name unknown mistakes {sorted(unknown)}; known: {tuple(known)}")
    full = {m: float(weights.get(m, 1.0)) for m in known}
    if any(w < 0 for w in full.values()) or not any(w > 0 for w in full.values()):
        raise ValueError(f"mistake weights {full}: use weights >= 0, at least one > 0")
    return full if len(set(full.values())) > 1 else None


def draw_option(rng: np.random.Generator, options: list, weights: dict[str, float] | None):
    """One of ``options`` (mistake names, None = faithful, which weighs 1): uniform, or by
    ``weights``. Uniform too when every option weighs 0, e.g. a scene whose only weighted
    mistake is impossible for it."""
    if weights is not None:
        p = np.array([1.0 if m is None else weights[m] for m in options])
        if p.sum() > 0:
            return options[rng.choice(len(options), p=p / p.sum())]
    return options[rng.integers(len(options))]


def make_pair(index: int, seed: int, size: int, label_noise: float, kinds=KINDS,
              clean_share: float = 0.0, mistake_weights: dict[str, float] | None = None) -> PreferenceRecord:
    """One pair for ``index``: deterministic from (seed, index), judged, maybe mislabelled.

    With probability ``clean_share`` one image is a faithful render and the other a near miss;
    otherwise both are drawn from {faithful, each kind of mistake}, so the pair may rank two
    imperfect images by how many checks they pass. ``mistake_weights`` draws the kinds of
    mistake by weight instead of uniformly (hard negatives for training; eval sets stay uniform).
    """
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, kinds)
    images, winner, rationale = judged_pair(
        rng, [None, *possible_mistakes(scene)], lambda options: draw_option(rng, options, mistake_weights),
        lambda mistake: render_variant(scene, mistake, size, rng), lambda image: judge(image, scene),
        clean_share, label_noise)
    return PreferenceRecord(prompt=scene.prompt, images=images, label=winner,
                            criteria=ALIGNMENT_CRITERIA, rationale=rationale)


def judged_pair(rng, options, draw, render, judge_one, clean_share: float, label_noise: float):
    """Two renders of ``options`` (None = faithful, else a mistake), drawn until the judge tells
    them apart (ties carry no preference): (renders, index of the better one, rationale), the
    label flipped with probability ``label_noise``. Still images and clips share it."""
    while True:
        choice = [draw(options) for _ in range(2)]
        if rng.random() < clean_share:
            choice = [None, draw(options[1:])][::rng.choice([-1, 1])]
        renders = [render(m) for m in choice]
        verdicts = [judge_one(r) for r in renders]
        if verdicts[0].score != verdicts[1].score:
            break
    winner = int(verdicts[1].score > verdicts[0].score)
    rationale = rationale_of(verdicts[winner], verdicts[1 - winner])
    if rng.random() < label_noise:
        winner = 1 - winner
    return tuple(renders), winner, rationale


class PreferencePairs:
    """A random-access source of judged pairs (for grain); ``split`` seeds keep sets disjoint."""

    def __init__(self, num_pairs: int, seed: int, size: int = 32, label_noise: float = 0.0,
                 kinds=KINDS, clean_share: float = 0.0, mistake_weights: dict[str, float] | None = None):
        if not 0.0 <= label_noise < 0.5:
            raise ValueError(f"label_noise={label_noise}: use a value in [0, 0.5)")
        if not 0.0 <= clean_share <= 1.0:
            raise ValueError(f"clean_share={clean_share}: use a value in [0, 1]")
        self.num_pairs, self.seed, self.size, self.noise, self.kinds = num_pairs, seed, size, label_noise, kinds
        self.clean_share, self.mistake_weights = clean_share, normalised_mistake_weights(mistake_weights)

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, index: int) -> PreferenceRecord:
        if not 0 <= index < self.num_pairs:
            raise IndexError(index)
        return make_pair(int(index), self.seed, self.size, self.noise, self.kinds, self.clean_share,
                         self.mistake_weights)


class WorldCaptions:
    """Images with what they show: the pretraining set of the smoke VLM (a reward model starts
    from a VLM that can already see, as the paper's InternVL RMs do). Half the images are drawn
    from a prompt, half from a near miss of it, and each is captioned by what was drawn.

    With ``question_share`` > 0 that share of the records are grounding questions instead, as a
    VLM's instruction data has them: the prompt asked about (criteria ``QUESTION``) and an image
    drawn from it (label 1, "yes") or from a near miss of it (label 0, "no")."""

    QUESTION = "question"

    def __init__(self, num_images: int, seed: int, size: int = 32, kinds=KINDS, question_share: float = 0.0):
        if not 0.0 <= question_share <= 1.0:
            raise ValueError(f"data.question_share={question_share} must lie in [0, 1]")
        self.num, self.seed, self.size, self.kinds = num_images, seed, size, kinds
        self.question_share = question_share

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> PreferenceRecord:
        if not 0 <= index < self.num:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, int(index)])
        scene = sample_scene(rng, self.kinds)
        if rng.random() < self.question_share:
            faithful = rng.random() < 0.5
            drawn = scene if faithful else mistaken_scene(scene, str(rng.choice(possible_mistakes(scene))), rng)
            return PreferenceRecord(prompt=scene.prompt, images=(render(drawn, self.size, rng),),
                                    label=int(faithful), criteria=self.QUESTION)
        if rng.random() < 0.5:
            scene = mistaken_scene(scene, str(rng.choice(possible_mistakes(scene))), rng)
        return PreferenceRecord(prompt=scene.prompt, images=(render(scene, self.size, rng),), label=1)
