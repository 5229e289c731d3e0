"""``fedpeft audit`` end to end: the real MiniLM, real clients in process, the real
SecAgg+ round; the attack and its chance reference read from report.json.

The adversary is the coordinator itself. On plain updates the attack must find each
client's labels (a weak attack would make every "at chance" line meaningless); under
SecAgg the audit must see only the sum — if the capture reached the clients' own updates
(or the job silently ran plain), the secure test fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpeft.cli.main import main


def audit(tmp_path: Path, data: Path, name: str, *extra: str) -> dict:
    out = tmp_path / name
    argv = [
        "audit",
        "--data",
        str(data),
        "--eval-data",
        str(data),
        "--max-eval-examples",
        "8",
        "--clients",
        "4",
        "--clients-per-round",
        "3",
        "--rounds",
        "1",
        "--partition",
        "shards",
        "--federation-shards-per-client",
        "1",
        "--attacks",
        "labels",
        "--output",
        str(out),
        *extra,
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code in (0, None)
    assert (out / "report.png").stat().st_size > 0
    return json.loads((out / "report.json").read_text())


def test_plain_updates_give_each_clients_labels_away(tmp_path: Path, tiny_text_file: Path) -> None:
    report = audit(tmp_path, tiny_text_file, "plain")
    labels = report["attacks"]["labels"]
    assert report["view"] == "each client's decoded update"
    assert labels["clients_scored"] == 3
    # one label per client (one shard each): recovered exactly, far above a common guess
    for client in labels["clients"]:
        assert client["recovered_labels"] == client["true_labels"]
    assert report["label_set_recovery"] == 1.0
    assert report["chance_label_set_recovery"] < 0.9
    assert labels["label_histogram_l1"] < labels["chance_label_histogram_l1"]


def test_secagg_leaves_only_the_sum(tmp_path: Path, tiny_text_file: Path) -> None:
    report = audit(tmp_path, tiny_text_file, "secure", "--secagg")
    labels = report["attacks"]["labels"]
    assert report["view"] == "the decoded sum of each round (SecAgg+)"
    # the sum gives every client the same guess: it cannot beat the best common guess
    guesses = {tuple(c["recovered_labels"]) for c in labels["clients"]}
    assert len(guesses) == 1
    assert report["label_set_recovery"] <= report["chance_label_set_recovery"] + 1e-9


def test_unknown_attack_is_refused_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--attacks", "labels,gradients", "--output", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "--attacks" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
