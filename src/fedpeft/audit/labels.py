"""Label inference from the classification head's update (iDLG / LLG style).

A LoRA classification job trains its output layer in full (``modules_to_save``), and the
output layer's update is a well-known leak: the gradient of softmax cross-entropy with
respect to the bias of class ``c`` is ``Σ_i (p_ic − y_ic)``, positive for every step on a
batch without class ``c``. A class the client never saw is pushed down at every step;
with the job's AdamW (which normalises each coordinate's step) it moves by up to the
learning rate per step, so the absent classes of a client land near ``−lr · Σ_t
schedule(t)`` — a number the coordinator computes from what it sent (the task's learning
rate, the job's schedule, batch size and epochs) and what the client reported (its example
count; under SecAgg the sum's total weight per summed client). A class the client did see
is pulled up whenever one of its examples is in a batch and ends elsewhere.

The attack (:func:`infer_labels`): each class's bias update, divided by that expected
drift of an absent class, gives ``s_c`` (−1: fell the whole drift); a class is called
present when it fell by less than half of it (``s_c > -ABSENT_FRACTION``). The histogram
of the present classes is ∝ ``1 / mean|ΔW_c|²``: under AdamW a class's weight row moves
least when its examples are many (their gradients of both signs cancel in Adam's first
moment while its second moment stays large), most when it is absent or rare. This is a
weak estimate — on TREC it beats the chance reference only slightly (docs/privacy_audit.md).

On a SecAgg+ round the coordinator holds only the cohort's mean update; the attack reads
it the same way (the drift of the mean is that of one client) and gives every summed
client the cohort's label set and histogram.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedpeft.errors import ConfigError

#: A class whose bias fell by less than this fraction of an absent class's drift is called
#: present. Measured on TREC (MiniLM, AdamW, 96 to 686 examples a client): absent classes
#: fall by 0.57 to 0.96 of the drift (less on large clients, whose absent-class gradients
#: shrink as training pushes them down while Adam's second moment remembers them); a
#: class with 6 or more examples by at most 0.49, and one seen once by anything from
#: nothing to 0.74 — those the attack can miss.
ABSENT_FRACTION = 0.5


@dataclass(frozen=True)
class LabelGuess:
    """What the attack recovers of one client (or one cohort) from an update."""

    present: np.ndarray  # bool (classes,)
    histogram: np.ndarray  # float (classes,), sums to 1 (zeros when nothing is present)
    scores: np.ndarray  # s_c: the bias update over the expected drift of an absent class


def head_keys(tensors: Mapping[str, np.ndarray], classes: int) -> tuple[str, str]:
    """The keys of the output layer's weight ``(classes, hidden)`` and bias ``(classes,)``
    in an adapter (the trainable head, saved through ``modules_to_save``)."""
    pairs = []
    for key, value in tensors.items():
        if not key.endswith(".bias") or tuple(value.shape) != (classes,):
            continue
        weight = key[: -len(".bias")] + ".weight"
        w = tensors.get(weight)
        if w is not None and w.ndim == 2 and w.shape[0] == classes:
            pairs.append((weight, key))
    if len(pairs) != 1:
        found = ", ".join(k for _, k in pairs) or "none"
        raise ConfigError(
            "--attacks",
            f"label inference needs exactly one trainable output layer with {classes} rows "
            f"in the adapter (lora.modules_to_save); found {found}",
        )
    return pairs[0]


def infer_labels(
    bias_update: np.ndarray, weight_update: np.ndarray, absent_drift: float
) -> LabelGuess:
    """Recover a label set and histogram from the output layer's update (bias
    ``(classes,)``, weight ``(classes, hidden)``); ``absent_drift`` (> 0) is how far an
    absent class's bias falls in the local run."""
    if not absent_drift > 0:
        raise ValueError(f"absent_drift must be positive, got {absent_drift}")
    scores = np.asarray(bias_update, np.float64) / absent_drift
    present = scores > -ABSENT_FRACTION
    moved = np.abs(np.asarray(weight_update, np.float64)).mean(axis=1)
    pull = np.where(present, 1.0 / np.maximum(moved, 1e-12) ** 2, 0.0)
    total = pull.sum()
    histogram = pull / total if total > 0 else pull
    return LabelGuess(present, histogram, scores)


def true_labels(
    labels: np.ndarray, shard: np.ndarray, classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A client's true label set and proportions (the ground truth the attack is scored on)."""
    counts = np.bincount(labels[shard], minlength=classes).astype(np.float64)
    return counts > 0, counts / max(counts.sum(), 1.0)
