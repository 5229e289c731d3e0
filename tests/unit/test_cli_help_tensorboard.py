"""``--tensorboard DIR``: the numeric fields of each metrics record become scalars."""

from __future__ import annotations

import struct
from pathlib import Path

from tensorboardX.proto import event_pb2

from fedpeft.cli.simulate import _Display
from fedpeft.config import JobConfig
from fedpeft.tensorboard import ScalarLogger, scalar_fields


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the event files under ``folder`` (TFRecord framing, no TensorFlow)."""
    out: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4  # length, its crc, the record, its crc
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_scalar_fields_keeps_finite_numbers_only() -> None:
    record = {
        "round": 2,
        "eval_accuracy": 0.5,
        "ok": True,
        "rejected": {"1": "x"},
        "n": float("nan"),
    }
    assert scalar_fields(record) == {"round": 2.0, "eval_accuracy": 0.5}


def test_simulate_display_writes_each_round(tmp_path: Path) -> None:
    display = _Display(JobConfig())
    with ScalarLogger(tmp_path / "tb") as tb:
        display.tensorboard = tb
        for r, acc in ((1, 0.5), (2, 0.75)):
            display.on_round_end(
                {
                    "round": r,
                    "clients_ok": 2,
                    "clients_sampled": 2,
                    "eval_accuracy": acc,
                    "bytes_up": 10 * r,
                    "bytes_down": 5,
                }
            )
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["eval_accuracy"] == {1: 0.5, 2: 0.75}
    assert scalars["bytes_up"] == {1: 10.0, 2: 20.0}
    assert "round" not in scalars  # the step, not a curve
