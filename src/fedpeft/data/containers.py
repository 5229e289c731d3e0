"""The two task shapes of fedpeft, as plain-Python containers (no torch).

* :class:`ClassificationData` -- texts with integer labels that index ``label_names``;
* :class:`InstructionData` -- prompt/response pairs for causal-LM fine-tuning, where
  the loss is taken on the response only (prompts are filled from the Alpaca templates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedpeft.errors import ConfigError, DataError

# The Stanford Alpaca prompt templates (tatsu-lab/stanford_alpaca, ``PROMPT_DICT``), in the
# variant used by alpaca-lora and most PEFT recipes: the prompt ends with a newline after
# "### Response:" so the response starts on its own line.
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

#: the keys of a record that becomes an :class:`InstructionData` example
INSTRUCTION_KEYS = ("instruction", "output")


def _check_indices(idx: Sequence[int], n: int) -> list[int]:
    out = [int(i) for i in idx]
    for i in out:
        if not 0 <= i < n:
            raise IndexError(f"subset index {i} out of range for a dataset of {n} examples")
    return out


def check_job_labels(label_names: Sequence[str] | None, field: str, source: str) -> None:
    """Refuse a classification job whose label set (fixed by ``source``, the config field
    ``field``) has fewer than two labels: a one-label classifier learns nothing and
    reports accuracy 1.0. A client's own data may hold fewer labels than its job."""
    if label_names is None or len(label_names) >= 2:
        return
    found = f"only the label {label_names[0]!r}" if label_names else "no label"
    raise ConfigError(
        field,
        f"{source} has {found}; a classification job needs examples of at least two "
        "labels (this data fixes the job's label set)",
    )


@dataclass(frozen=True)
class ClassificationData:
    """Texts with integer labels; ``labels[i]`` indexes ``label_names``."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"texts and labels differ in length ({len(self.texts)} != {len(self.labels)})"
            )
        if len(set(self.label_names)) != len(self.label_names):
            raise DataError(f"label_names has duplicates: {self.label_names}")
        k = len(self.label_names)
        for i, label in enumerate(self.labels):
            if not 0 <= label < k:
                raise DataError(f"label {label} of example {i} is outside 0..{k - 1}")

    @property
    def num_labels(self) -> int:
        """Number of classes (``len(label_names)``), whether or not each one occurs."""
        return len(self.label_names)

    def subset(self, idx: Sequence[int]) -> ClassificationData:
        """The examples at positions ``idx`` (in that order); label names are kept."""
        rows = _check_indices(idx, len(self))
        return ClassificationData(
            texts=[self.texts[i] for i in rows],
            labels=[self.labels[i] for i in rows],
            label_names=list(self.label_names),
        )

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class InstructionData:
    """Prompt/response pairs for causal-LM fine-tuning (loss on the response only)."""

    prompts: list[str]
    responses: list[str]

    def __post_init__(self) -> None:
        if len(self.prompts) != len(self.responses):
            raise DataError(
                f"prompts and responses differ in length "
                f"({len(self.prompts)} != {len(self.responses)})"
            )

    def subset(self, idx: Sequence[int]) -> InstructionData:
        """The examples at positions ``idx`` (in that order)."""
        rows = _check_indices(idx, len(self))
        return InstructionData(
            prompts=[self.prompts[i] for i in rows],
            responses=[self.responses[i] for i in rows],
        )

    def __len__(self) -> int:
        return len(self.prompts)


Dataset = ClassificationData | InstructionData


def format_alpaca_prompt(instruction: str, input: str | None = None) -> str:
    """Fill the Alpaca template; an empty or missing ``input`` selects the no-input variant."""
    if input is not None and input.strip():
        return ALPACA_TEMPLATE.format(instruction=instruction, input=input)
    return ALPACA_TEMPLATE_NO_INPUT.format(instruction=instruction)


_PREAMBLES = tuple(
    t.split("### Instruction:\n")[0] for t in (ALPACA_TEMPLATE, ALPACA_TEMPLATE_NO_INPUT)
)


def example_texts(data: Dataset) -> list[str]:
    """What an example is *about*, one text per example (what the ``cluster`` partition
    embeds): the text of a classification example; the instruction (and its input) of an
    instruction example, without the Alpaca template around it, which is the same in
    every prompt and would only pull all embeddings together."""
    if isinstance(data, ClassificationData):
        return list(data.texts)
    out = []
    for prompt in data.prompts:
        text = prompt
        for preamble in _PREAMBLES:
            if text.startswith(preamble + "### Instruction:\n"):
                text = text[len(preamble) + len("### Instruction:\n") :]
                break
        text = text.removesuffix("\n\n### Response:\n").replace("\n\n### Input:\n", "\n")
        out.append(text.strip() or prompt)
    return out


def check_max_examples(max_examples: int | None) -> None:
    """Raise :class:`ConfigError` unless ``max_examples`` is None or a positive int."""
    if max_examples is not None and (
        isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1
    ):
        raise ConfigError(
            "max_examples", f"must be a positive integer or None, got {max_examples!r}"
        )
