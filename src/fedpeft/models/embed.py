"""Sentence embeddings with the packaged MiniLM (mean pooling, as sentence-transformers'
all-MiniLM-L6-v2 does), for the label-free ``cluster`` partition.

Embeddings of a text list are cached in the fedpeft cache folder under the hash of the
texts, so a benchmark that partitions the same data again does not embed it again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedpeft.cache import cache_root
from fedpeft.models.registry import MODEL_REGISTRY, load_tokenizer, quiet_transformers

log = logging.getLogger(__name__)

#: tokens per text embedded: instructions are short; longer texts are cut (what
#: sentence-transformers' all-MiniLM-L6-v2 itself does at 256)
EMBED_MAX_LENGTH = 128


def _key(texts: Sequence[str], model: str) -> str:
    h = hashlib.sha256(f"{model}|{EMBED_MAX_LENGTH}|{len(texts)}".encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()[:32]


def embed_texts(
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """``len(texts) x 384`` float32 MiniLM sentence embeddings (mean-pooled, L2-normed).

    Deterministic (inference only, no dropout). What costs time is the encoder's forward
    pass, about 1k short texts per second per CPU core pair; the result is cached."""
    import torch
    from transformers import AutoModel

    root = cache_root(cache_dir)
    path = root / "embeddings" / f"minilm-{_key(texts, 'minilm')}.npy"
    if use_cache and path.is_file():
        return np.load(path)
    folder = str(MODEL_REGISTRY["minilm"].locate(root))
    tokenizer = load_tokenizer(folder)
    with quiet_transformers():
        model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    # longest first: batches of alike lengths pad little
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = np.zeros((len(texts), int(model.config.hidden_size)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx],
                truncation=True,
                max_length=EMBED_MAX_LENGTH,
                padding=True,
                return_tensors="pt",
            )
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[idx] = pooled.numpy()
    if use_cache:
        _save(path, out)
    return out


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)  # atomic: a half-written file is never read
