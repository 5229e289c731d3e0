"""The local loop's pieces: step planning, schedule, encoding, metrics."""

from __future__ import annotations

import pytest
import torch

from fedpeft.config import TrainConfig
from fedpeft.data import ClassificationData, InstructionData
from fedpeft.training.encode import IGNORE_INDEX, encode
from fedpeft.training.loop import lr_lambda, macro_f1, planned_steps


class _Tok:
    """A whitespace tokenizer with the HF call signature (enough for encode())."""

    name_or_path = "toy"
    pad_token_id = 0
    eos_token = "</s>"

    def __call__(self, texts, truncation=False, max_length=None, add_special_tokens=True):
        ids = []
        for t in texts:
            seq = [len(w) + 1 for w in t.split()]
            if add_special_tokens:
                seq = [99, *seq]
            if truncation and max_length:
                seq = seq[:max_length]
            ids.append(seq)
        return {"input_ids": ids}


def test_planned_steps() -> None:
    assert planned_steps(100, TrainConfig(batch_size=16, epochs=1.0)) == 7
    assert planned_steps(100, TrainConfig(batch_size=16, epochs=2.0, grad_accum=2)) == 7
    assert planned_steps(100, TrainConfig(batch_size=16, max_steps=3)) == 3
    assert planned_steps(10, TrainConfig(batch_size=16, max_steps=50)) == 50


def test_warmup_then_linear_decay() -> None:
    f = lr_lambda(100, TrainConfig(warmup_ratio=0.1))
    assert f(0) < f(5) < f(9) <= 1.0
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(100) == 0.0
    const = lr_lambda(100, TrainConfig(warmup_ratio=0.0, schedule="constant"))
    assert const(0) == const(99) == 1.0


def test_classification_encoding_pads_dynamically() -> None:
    data = ClassificationData(["a bb", "ccc dd e f"], [0, 1], ["n", "p"])
    enc = encode(_Tok(), data, max_length=4)
    batch = enc.batch([0, 1])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert batch["labels"].tolist() == [0, 1]
    assert encode(_Tok(), data, max_length=4) is enc  # cached


def test_causal_encoding_masks_the_prompt() -> None:
    data = InstructionData(["say hi"], ["hello there"])
    enc = encode(_Tok(), data, max_length=32)
    batch = enc.batch([0])
    labels = batch["labels"][0].tolist()
    assert labels[:3] == [IGNORE_INDEX] * 3  # BOS + 2 prompt tokens never scored
    assert labels[3:] == batch["input_ids"][0].tolist()[3:]


def test_macro_f1() -> None:
    gold = torch.tensor([0, 0, 1, 1])
    assert macro_f1(gold, gold) == 1.0
    assert macro_f1(torch.tensor([0, 0, 0, 0]), gold) == pytest.approx((2 / 3 + 0) / 2)


class _TinyClassifier(torch.nn.Module):
    """Embedding-bag classifier with the HF output shape (``.loss``, ``.logits``)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.EmbeddingBag(128, 4, mode="sum")
        self.head = torch.nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask, labels=None):
        from types import SimpleNamespace

        logits = self.head(self.emb(input_ids, per_sample_weights=attention_mask.float()))
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def _drift(mu: float) -> float:
    from fedpeft.training.loop import train_local

    data = ClassificationData(
        [f"w{i} x{i % 3}" for i in range(32)], [i % 2 for i in range(32)], ["a", "b"]
    )
    enc = encode(_Tok(), data, max_length=8)
    model = _TinyClassifier()
    start = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(max_steps=30, batch_size=8, lr=0.05, warmup_ratio=0.0, seed=1)
    stats = train_local(model, enc, cfg, seed=1, proximal_mu=mu)
    assert stats.steps == 30 and stats.examples == 240
    return sum(float(((p - s) ** 2).sum()) for p, s in zip(model.parameters(), start, strict=True))


def test_fedprox_term_keeps_weights_near_start() -> None:
    assert _drift(mu=10.0) < 0.5 * _drift(mu=0.0)


def test_sgd_client_takes_the_plain_gradient_step() -> None:
    """optimizer=sgd, momentum 0: one step moves every weight by exactly −lr·∇L."""
    from fedpeft.training.loop import train_local

    data = ClassificationData(
        ["good movie", "bad film", "great", "awful"], [1, 0, 1, 0], ["n", "p"]
    )
    enc = encode(_Tok(), data, max_length=8)
    model = _TinyClassifier()
    batch = next(iter(enc.batches(4, generator=torch.Generator().manual_seed(0))))
    model.zero_grad()
    model(**batch).loss.backward()
    expected = [(p - 0.3 * p.grad).detach().clone() for p in model.parameters()]
    cfg = TrainConfig(
        optimizer="sgd",
        momentum=0.0,
        lr=0.3,
        max_steps=1,
        batch_size=4,
        warmup_ratio=0.0,
        schedule="constant",
        max_grad_norm=None,
    )
    train_local(model, enc, cfg, seed=0)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p, e)


def test_sgd_momentum_carries_over_steps() -> None:
    from fedpeft.training.loop import make_optimizer

    weight = torch.nn.Parameter(torch.zeros(1))
    opt = make_optimizer([weight], TrainConfig(optimizer="sgd", momentum=0.5, lr=1.0))
    assert isinstance(opt, torch.optim.SGD)
    for _ in range(2):
        weight.grad = torch.ones(1)
        opt.step()
    assert float(weight) == -(1.0 + 1.5)  # buffers 1, then 0.5·1 + 1
    assert isinstance(make_optimizer([weight], TrainConfig()), torch.optim.AdamW)


def test_encode_cache_is_keyed_on_content() -> None:
    first = encode(_Tok(), ClassificationData(["good movie", "bad"], [1, 0], ["n", "p"]), 8)
    del first
    other = ClassificationData(["terrible film", "great"], [0, 1], ["n", "p"])
    enc = encode(_Tok(), other, 8)
    assert enc.labels.tolist() == [0, 1]
    assert enc.input_ids[0].tolist() == [99, 9, 5]  # "terrible film", not "good movie"


def _train_tiny(labels: list[int], tau: float) -> _TinyClassifier:
    from fedpeft.training.loop import train_local

    data = ClassificationData([f"w{i} x{i % 3}" for i in range(len(labels))], labels, ["a", "b"])
    model = _TinyClassifier()
    cfg = TrainConfig(max_steps=20, batch_size=8, lr=0.05, warmup_ratio=0.0, seed=1)
    train_local(model, encode(_Tok(), data, max_length=8), cfg, seed=1, logit_adjustment=tau)
    return model


def test_label_log_prior_is_add_one_smoothed() -> None:
    from fedpeft.training.loop import label_log_prior

    data = encode(_Tok(), ClassificationData(["a", "b", "c"], [1, 1, 1], ["x", "y", "z"]), 8)
    model = torch.nn.Linear(1, 1)
    model.config = type("Cfg", (), {"num_labels": 3})()  # type: ignore[assignment]
    expected = torch.log(torch.tensor([1 / 6, 4 / 6, 1 / 6]))
    torch.testing.assert_close(label_log_prior(data, model), expected)


def test_logit_adjustment_is_a_no_op_on_balanced_data() -> None:
    balanced = [i % 2 for i in range(32)]
    plain, adjusted = _train_tiny(balanced, 0.0), _train_tiny(balanced, 1.0)
    for p, q in zip(plain.parameters(), adjusted.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_logit_adjustment_stops_pushing_the_local_majority() -> None:
    skewed = [1] * 28 + [0] * 4

    def majority_margin(model: _TinyClassifier) -> float:
        return float(model.head.bias[1] - model.head.bias[0])

    assert majority_margin(_train_tiny(skewed, 1.0)) < majority_margin(_train_tiny(skewed, 0.0))


def _file_order_eval(model: torch.nn.Module, enc) -> tuple[float, float, float]:
    """The plain reference: file order, one batch per 5 examples."""
    preds, golds, loss = [], [], 0.0
    with torch.no_grad():
        for batch in enc.batches(5):
            out = model(**batch)
            loss += float(out.loss) * len(batch["labels"])
            preds.append(out.logits.argmax(-1))
            golds.append(batch["labels"])
    pred, gold = torch.cat(preds), torch.cat(golds)
    return loss / len(gold), float((pred == gold).float().mean()), macro_f1(pred, gold)


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_evaluation_split_into_slices_adds_up_to_the_whole(parts: int) -> None:
    """Length-sorted slices (what each Ray worker evaluates) give the whole set's metrics."""
    from fedpeft.training.loop import eval_order, evaluate_sums, finish_eval

    texts = [" ".join(f"w{j}" for j in range(1 + i % 6)) for i in range(23)]
    data = ClassificationData(texts, [(i * 7) % 2 for i in range(23)], ["a", "b"])
    enc = encode(_Tok(), data, max_length=8)
    model = _TinyClassifier()
    loss, acc, f1 = _file_order_eval(model, enc)
    slices = [evaluate_sums(model, enc, 4, part=p, parts=parts) for p in range(parts)]
    got = finish_eval(slices)
    assert got["eval_loss"] == pytest.approx(loss, rel=1e-5)
    assert got["eval_accuracy"] == pytest.approx(acc)
    assert got["eval_macro_f1"] == pytest.approx(f1)
    # every example in exactly one slice; each slice's lengths ascend
    seen = sorted(i for p in range(parts) for i in eval_order(enc, p, parts))
    assert seen == list(range(23))
    lengths = [len(enc.input_ids[i]) for i in eval_order(enc, 0, parts)]
    assert lengths == sorted(lengths)
    with pytest.raises(ValueError, match="part"):
        eval_order(enc, parts, parts)
