"""`fedpeft coordinator` / `fedpeft client`: bad input is one clear line and exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

FEDPEFT = [sys.executable, "-m", "fedpeft.cli.main"]
SERVE = ["coordinator", "serve", "--state", "/tmp/unused-fedpeft.db", "--output", "/tmp/x"]
RUN = ["client", "run", "--data", "x.txt", "--state", "/tmp/unused-fedpeft-client"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            [*SERVE, "--insecure-localhost", "--host", "0.0.0.0"],
            ["--insecure-localhost", "127.0.0.1 only"],
        ),
        ([*SERVE, "--eval-data", "x.txt"], ["--tls-cert", "TLS is required"]),
        ([*SERVE, "--tls-cert", "/no/c.pem", "--tls-key", "/no/k.pem"], ["/no/c.pem"]),
        (SERVE[:4], ["--output", "run folder"]),
        ([*SERVE, "--dp-epsilon", "-1"], ["dp.epsilon"]),  # the job's options reach the config
        ([*SERVE, "--clients", "5", "--max-clients", "6"], ["--clients", "--max-clients"]),
        ([*RUN, "--coordinator", "10.1.2.3:50051", "--insecure-localhost"], ["127.0.0.1 only"]),
        ([*RUN, "--coordinator", "127.0.0.1:1", "--shard", "3/3"], ["--shard"]),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needles: list[str]) -> None:
    proc = subprocess.run([*FEDPEFT, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
