"""`fedpeft generate`, ROUGE-L and the causal-LM federation on a tiny random Llama.

The tiny model (6 blocks, 32 wide, MiniLM's tokenizer) stands in for SmolLM2, whose
steps take minutes on CPU (tests/integration/test_smollm.py, slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedpeft.config import JobConfig
from fedpeft.errors import ConfigError
from fedpeft.training.encode import encode
from fedpeft.training.generate import Generation, find_adapter, generate_texts, rouge_l
from fedpeft.training.loop import evaluate_sums, finish_eval
from tests.unit.test_offsite import make_tiny_backbone


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_backbone(tmp_path_factory.mktemp("llama") / "llama", "llama", layers=2)


@pytest.fixture(scope="module")
def alpaca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("alpaca") / "alpaca.json"
    records = [
        {"instruction": f"Count to {i % 5 + 1}.", "input": "", "output": "one two three"}
        for i in range(40)
    ]
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def fed_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, alpaca: Path) -> Path:
    """One federated round of the tiny Llama on instruction data, with no --eval-data."""
    from fedpeft.simulation import run_simulation

    out = tmp_path_factory.mktemp("runs") / "fed"
    cfg = JobConfig().replace(
        {
            "model.name": str(tiny_llama),
            "model.device": "cpu",
            "data.train": str(alpaca),
            "data.max_length": 48,
            "output": str(out),
            "federation.clients": 2,
            "federation.clients_per_round": 2,
            "federation.rounds": 1,
            "federation.partition": "iid",
            "train.max_steps": 2,
            "train.batch_size": 4,
            "train.lr": 5e-3,
        }
    )
    summary = run_simulation(cfg)
    assert summary["eval_examples"] == 4  # data.holdout = 0.1 of 40
    return out


def test_federated_causal_lm_reports_held_out_perplexity(fed_run: Path) -> None:
    summary = json.loads((fed_run / "summary.json").read_text())
    assert summary["initial_eval_perplexity"] > 1.0
    assert summary["final_eval_perplexity"] > 1.0
    lines = [json.loads(x) for x in (fed_run / "metrics.jsonl").read_text().splitlines()]
    assert all("eval_perplexity" in r for r in lines)
    assert not any("eval_accuracy" in r for r in lines)


def test_exported_adapter_loads_with_peft_and_generates(fed_run: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder, info = find_adapter(fed_run)
    assert folder == fed_run / "adapter" and info["task"] == "causal_lm"
    base = AutoModelForCausalLM.from_pretrained(info["base_model"])
    model = PeftModel.from_pretrained(base, str(folder))
    # the federated adapter is really in there: its lora_B moved off PEFT's zero init
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)
    from fedpeft.models import load_tokenizer

    tokenizer = load_tokenizer(info["base_model"])
    texts = generate_texts(model, tokenizer, ["Count to 3.", "Hi"], max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def run_cli(args: list[str]) -> int:
    from fedpeft.cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0)


def test_generate_command_prints_a_completion(
    fed_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["generate", str(fed_run), "--prompt", "Count to 3.", "--max-new-tokens", "4"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert out.out.strip()


def test_generate_command_reads_a_prompts_file(
    fed_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"instruction": "Count to 2."}\n{"instruction": "Add", "input": "1 2"}\n')
    code = run_cli(["generate", str(fed_run), "--prompts", str(prompts), "--max-new-tokens", "3"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "### Count to 2." in out.out and "### Add" in out.out


def test_generate_refuses_what_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["generate", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "RUN_OR_ADAPTER" in capsys.readouterr().err
    assert run_cli(["generate", str(tmp_path), "--prompt", "x"]) == 2
    assert "no PEFT adapter" in capsys.readouterr().err
    classifier = tmp_path / "cls"
    classifier.mkdir()
    (classifier / "adapter_config.json").write_text("{}")
    (classifier / "fedpeft.json").write_text(json.dumps({"task": "classification"}))
    with pytest.raises(ConfigError, match="generation needs a causal LM"):
        find_adapter(classifier)


def test_rouge_l_is_googles_lcs_f_measure() -> None:
    # LCS("the cat sat", "the cat was sitting") = "the cat" (stemmed "sat" != "sit"):
    # P = 2/3, R = 2/4, F = 4/7
    scores = rouge_l(
        ["the cat sat", "exactly this", ""], ["the cat was sitting", "exactly this", "x"]
    )
    assert scores == pytest.approx([4 / 7, 1.0, 0.0])


def test_rouge_l_in_evaluation_adds_up_over_slices(tiny_llama: Path, alpaca: Path) -> None:
    """Split over workers, each slice generates for its own share of the first N prompts:
    the counts add to N (a slice that scored every prompt would count them twice)."""
    from fedpeft.data import load_dataset
    from fedpeft.models import Task, load_backbone, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    model = load_backbone(str(tiny_llama), Task.CAUSAL_LM)
    data = encode(tokenizer, load_dataset(str(alpaca), max_examples=12), 48)
    gen = Generation(tokenizer, examples=5, max_new_tokens=3, batch_size=2)
    whole = evaluate_sums(model, data, 4, generation=gen)
    parts = [evaluate_sums(model, data, 4, part=p, parts=2, generation=gen) for p in range(2)]
    assert whole.rouge_count == 5 == sum(p.rouge_count for p in parts)
    a, b = finish_eval([whole]), finish_eval(parts)
    assert a["eval_rouge_l"] == pytest.approx(b["eval_rouge_l"])
    assert a["eval_perplexity"] == pytest.approx(b["eval_perplexity"], rel=1e-4)
    assert "eval_rouge_l" not in finish_eval([evaluate_sums(model, data, 4)])


def test_generation_is_greedy_and_batch_independent(tiny_llama: Path) -> None:
    from fedpeft.models import Task, load_backbone, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_llama))
    model = load_backbone(str(tiny_llama), Task.CAUSAL_LM)
    prompts = ["a b c d e f", "hello", "one two"]
    together = generate_texts(model, tokenizer, prompts, max_new_tokens=4, batch_size=3)
    alone = [generate_texts(model, tokenizer, [p], max_new_tokens=4)[0] for p in prompts]
    assert together == alone  # left padding does not change a prompt's completion


def test_round_table_shows_perplexity_for_a_causal_lm() -> None:
    from fedpeft.cli.simulate import _Display

    def headers(display: Any) -> list[str]:
        return [str(c.header) for c in display.render().columns]

    causal = JobConfig().replace({"train.eval_rouge_examples": 10})
    assert "eval perplexity" in headers(_Display(causal, causal=True))
    assert "ROUGE-L" in headers(_Display(causal, causal=True))
    assert "eval accuracy" not in headers(_Display(causal, causal=True))
    assert "eval accuracy" in headers(_Display(JobConfig()))


def test_train_stats_count_the_tokens_trained_on(tiny_llama: Path, alpaca: Path) -> None:
    """tokens/s per client is TrainStats.tokens / seconds: the real tokens, no padding."""
    from fedpeft.config import TrainConfig
    from fedpeft.data import load_dataset
    from fedpeft.models import Task, load_backbone, load_tokenizer
    from fedpeft.training.loop import train_local

    tokenizer = load_tokenizer(str(tiny_llama))
    model = load_backbone(str(tiny_llama), Task.CAUSAL_LM)
    data = encode(tokenizer, load_dataset(str(alpaca), max_examples=6), 48)
    stats = train_local(model, data, TrainConfig(max_steps=2, batch_size=3), seed=0)
    assert stats.examples == 6
    assert stats.tokens == sum(len(x) for x in data.input_ids)
