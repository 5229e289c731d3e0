"""``[data]``: where examples come from and which columns hold text and label."""

from __future__ import annotations

from dataclasses import dataclass, field

from fedpeft.config.checks import doc
from fedpeft.errors import ConfigError


def _column(name: str, value: object) -> None:
    """A data column: a non-empty name or a 0-based index."""
    if isinstance(value, bool) or not (
        (isinstance(value, str) and value.strip()) or (isinstance(value, int) and value >= 0)
    ):
        raise ConfigError(name, f"must be a column name or a 0-based index, got {value!r}")


@dataclass
class DataConfig:
    """Where examples come from."""

    train: str = field(
        default="reuters-r8", metadata=doc("training data: built-in name or local file")
    )
    eval: str | None = field(
        default=None, metadata=doc("held-out data; default: the built-in test split")
    )
    text_column: str | int | list[str | int] = field(
        default="text",
        metadata=doc(
            "text column of jsonl/csv/tsv: a name, a 0-based index (csv/tsv), or a list of "
            "them whose texts are joined with a space, e.g. title + description (flag: "
            "comma-separated, --text-column 1,2)"
        ),
    )
    label_column: str | int = field(
        default="label", metadata=doc("label column of jsonl/csv/tsv: a name or a 0-based index")
    )
    header: bool | str = field(
        default="auto",
        metadata=doc(
            "csv/tsv: does the first row name the columns? true, false, or auto (with column "
            "names: yes; with indices only: yes unless its label cell is a label of a later row)"
        ),
    )
    holdout: float = field(
        default=0.1,
        metadata=doc(
            "instruction data without data.eval: hold out this fraction of data.train (at "
            "most 500 examples; seeded by train.seed) for evaluation; 0: none"
        ),
    )
    clusters: int = field(
        default=8,
        metadata=doc("federation.partition = cluster: k-means clusters of the MiniLM embeddings"),
    )
    max_length: int = field(default=64, metadata=doc("tokens per example (truncation)"))
    max_train_examples: int | None = field(default=None, metadata=doc("cap on training examples"))
    max_eval_examples: int | None = field(
        default=None,
        metadata=doc("cap on held-out examples (evaluation cost); 0 or unset: no cap"),
    )

    def __post_init__(self) -> None:
        texts = self.text_column if isinstance(self.text_column, list) else [self.text_column]
        if not texts:
            raise ConfigError("data.text_column", "must name at least one column")
        for column in texts:
            _column("data.text_column", column)
        _column("data.label_column", self.label_column)
        if self.header not in (True, False, "auto"):
            raise ConfigError("data.header", f"must be true, false or auto, got {self.header!r}")
        hold = self.holdout
        if isinstance(hold, bool) or not isinstance(hold, (int, float)) or not 0 <= hold < 1:
            raise ConfigError("data.holdout", f"must be a number in [0, 1), got {hold!r}")
        k = self.clusters
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError("data.clusters", f"must be a positive integer, got {k!r}")
        if not isinstance(self.max_length, int) or self.max_length <= 0:
            raise ConfigError(
                "data.max_length", f"must be a positive integer, got {self.max_length!r}"
            )
        value = self.max_train_examples
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(
                "data.max_train_examples", f"must be a positive integer, got {value!r}"
            )
        value = self.max_eval_examples
        bad = isinstance(value, bool) or not isinstance(value, int) or value < 0
        if value is not None and bad:
            raise ConfigError(
                "data.max_eval_examples", f"must be an integer >= 0 (0: no cap), got {value!r}"
            )
