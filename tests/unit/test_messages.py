"""Typed task settings: what crosses the wire is the dataclass's JSON object, and bad
settings from a peer are refused, never guessed at."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedpeft.errors import ProtocolError
from fedpeft.protocol.messages import TaskSettings

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(
    lr=st.none() | finite,
    mu=finite,
    tau=finite,
    clip=st.none() | finite,
    enc=st.none() | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
def test_settings_round_trip_through_their_dict(lr, mu, tau, clip, enc) -> None:
    settings = TaskSettings(lr, mu, tau, clip, enc)
    assert TaskSettings.from_dict(settings.to_dict()) == settings


def test_none_is_not_sent() -> None:
    assert TaskSettings().to_dict() == {"proximal_mu": 0.0, "logit_adjustment": 0.0}
    assert TaskSettings(lr=0.5).to_dict()["lr"] == 0.5


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"learning_rate": 0.1}, "unknown key"),
        ({"lr": "0.1"}, "`lr` must be a finite number"),
        ({"lr": True}, "`lr` must be a finite number"),
        ({"dp_clip": math.inf}, "`dp_clip` must be a finite number"),
        ({"proximal_mu": math.nan}, "`proximal_mu` must be a finite number"),
        ({"secagg_encoding": [1, 2]}, "`secagg_encoding` must be an object"),
    ],
)
def test_bad_settings_from_a_peer_are_refused(data: dict, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        TaskSettings.from_dict(data)
