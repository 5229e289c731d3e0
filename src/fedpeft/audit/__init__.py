"""``fedpeft audit``: what an honest-but-curious coordinator learns from a job.

:mod:`~fedpeft.audit.capture` runs the job (as ``fedpeft simulate`` does) and keeps what
the coordinator holds each round; :mod:`~fedpeft.audit.labels` infers clients' labels
from the output layer's update; :mod:`~fedpeft.audit.scoring` scores the attack and the
chance reference; :mod:`~fedpeft.audit.run` writes the report (docs/privacy_audit.md).
"""

from fedpeft.audit.run import ATTACKS, label_attack, parse_attacks, run_audit

__all__ = ["ATTACKS", "label_attack", "parse_attacks", "run_audit"]
