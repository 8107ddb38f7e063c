"""The Best-of-N reference bank: the reference images a pairwise reward compares against during RL.

For each training prompt (RewardDance §3.3.1): N samples from the frozen starting generator, a
round robin of every ordered pair under the RM, the samples ranked by win count, and the top-k
kept as that prompt's references (bottom-k for the control experiment). A pair (i, j) is a win
for j when the order-averaged preference (P(j beats i) + 1 - P(i beats j)) / 2 exceeds 1/2, which
cancels the RM's position bias; ties in wins are broken by the summed preference.

The bank is built once and written to ``WORKDIR/bank`` (``bank.npz`` + ``bank.json``); a resumed
or restarted job loads it, and refuses one built with other settings.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Callable, Sequence

import numpy as np
from absl import logging
from etils import epath

SELECT = ("top", "bottom")
ARRAYS = ("images", "wins", "preference", "chosen")

# sample_fn(prompt_indexes [M], sample_ids [M]) -> uint8 samples [M, *image_shape] (images or clips)
SampleFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# score_fn(prompt_indexes [M], references [M, *image_shape], images [M, *image_shape]) -> P(yes) [M]
ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass
class ReferenceBank:
    images: np.ndarray       # [P, k, *image_shape] uint8: each prompt's references, best ranked first
    wins: np.ndarray         # [P, N] round-robin win counts of the candidates
    preference: np.ndarray   # [P, N] summed order-averaged preference (the tie-breaker)
    chosen: np.ndarray       # [P, k] which candidates became references
    prompts: list[str]
    settings: dict

    @property
    def num_references(self) -> int:
        return self.images.shape[1]


def prompts_digest(prompts: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def round_robin(pref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Win counts and summed preference [P, N] from ``pref[p, i, j]`` = P(yes: image j beats
    reference i) over all ordered pairs (the diagonal is ignored)."""
    pref = np.asarray(pref, np.float64)
    n = pref.shape[-1]
    beats = (pref + 1.0 - np.swapaxes(pref, -1, -2)) / 2.0      # [p, i, j]: j beats i
    off = ~np.eye(n, dtype=bool)
    wins = ((beats > 0.5) & off).sum(axis=-2)
    soft = np.where(off, beats, 0.0).sum(axis=-2)
    return wins, soft


def select(wins: np.ndarray, preference: np.ndarray, k: int, how: str) -> np.ndarray:
    """[P, k] candidate indexes: the k best by (wins, preference), best first, or the k worst."""
    if how not in SELECT:
        raise ValueError(f"bank.select={how!r}: use one of {SELECT}")
    order = np.stack([np.lexsort((-preference[p], -wins[p])) for p in range(len(wins))])
    return order[:, :k] if how == "top" else order[:, ::-1][:, :k]


def build(prompts: Sequence[str], sample_fn: SampleFn, score_fn: ScoreFn, *, num_samples: int,
          top_k: int, how: str, chunk: int, settings: dict) -> ReferenceBank:
    """Sample, play the round robin and keep the references, a few prompts at a time (so a
    1024px bank for thousands of prompts never holds more than one group's candidates)."""
    n = num_samples
    if not 2 <= n <= 16:
        raise ValueError(f"bank.num_samples={n}: Best-of-N uses 2 <= N <= 16")
    if not 1 <= top_k <= n:
        raise ValueError(f"bank.top_k={top_k} must be between 1 and bank.num_samples={n}")
    group = max(1, chunk // n)
    pairs_i, pairs_j = np.nonzero(~np.eye(n, dtype=bool))
    images, wins, prefs, chosen = [], [], [], []
    for start in range(0, len(prompts), group):
        idx = np.arange(start, min(start + group, len(prompts)))
        rows = np.repeat(idx, n)
        candidates = sample_fn(rows, rows * n + np.tile(np.arange(n), len(idx)))
        candidates = candidates.reshape(len(idx), n, *candidates.shape[1:])
        pref = np.zeros((len(idx), n, n), np.float32)
        flat_p = np.repeat(np.arange(len(idx)), len(pairs_i))
        flat_i, flat_j = np.tile(pairs_i, len(idx)), np.tile(pairs_j, len(idx))
        for s in range(0, len(flat_p), chunk):
            sl = slice(s, s + chunk)
            p, i, j = flat_p[sl], flat_i[sl], flat_j[sl]
            pref[p, i, j] = score_fn(idx[p], candidates[p, i], candidates[p, j])
        w, soft = round_robin(pref)
        pick = select(w, soft, top_k, how)
        images.append(np.take_along_axis(candidates, pick.reshape(pick.shape + (1,) * (candidates.ndim - 2)), axis=1))
        wins.append(w), prefs.append(soft), chosen.append(pick)
        logging.info("reference bank: %d/%d prompts", idx[-1] + 1, len(prompts))
    return ReferenceBank(np.concatenate(images), np.concatenate(wins), np.concatenate(prefs),
                         np.concatenate(chosen), list(prompts), dict(settings))


def save(bank: ReferenceBank, directory: str) -> None:
    """Write ``bank.npz`` then ``bank.json``: the json's presence marks a complete bank."""
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{name: getattr(bank, name) for name in ARRAYS})
    (directory / "bank.npz").write_bytes(buffer.getvalue())
    meta = {"prompts": bank.prompts, "settings": bank.settings}
    tmp = directory / "bank.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.rename(directory / "bank.json")


def exists(directory: str) -> bool:
    return (epath.Path(directory) / "bank.json").exists()


def load(directory: str, settings: dict) -> ReferenceBank:
    """The bank in ``directory``; it must have been built with the same ``settings``."""
    directory = epath.Path(directory)
    meta = json.loads((directory / "bank.json").read_text())
    differ = {k: (meta["settings"].get(k), v) for k, v in settings.items() if meta["settings"].get(k) != v}
    if differ:
        raise ValueError(
            f"the reference bank in {directory} was built with other settings "
            f"(key: (stored, configured)) {differ}; use a new workdir, or delete {directory} to rebuild it")
    with np.load(io.BytesIO((directory / "bank.npz").read_bytes())) as data:
        arrays = {name: data[name] for name in ARRAYS}
    return ReferenceBank(**arrays, prompts=meta["prompts"], settings=meta["settings"])
