"""GSB (Good / Same / Bad), the paper's head-to-head measure, from a pairwise reward model judging
generator B against generator A in both orders (P(yes): "is image 2 better than image 1?")."""
from __future__ import annotations

import numpy as np


def gsb_verdicts(b_over_a, a_over_b, margin: float) -> tuple[np.ndarray, dict]:
    """Order-averaged P(B beats A) = (P(B over A) + 1 - P(A over B)) / 2 per comparison, and the
    counts: Good where it is above 0.5 + margin, Bad below 0.5 - margin, Same otherwise;
    GSB = (G - B) / (G + S + B)."""
    p = (np.asarray(b_over_a, np.float64) + 1.0 - np.asarray(a_over_b, np.float64)) / 2.0
    good, bad = int((p > 0.5 + margin).sum()), int((p < 0.5 - margin).sum())
    same = len(p) - good - bad
    return p, dict(good=good, same=same, bad=bad, gsb=(good - bad) / max(len(p), 1))
