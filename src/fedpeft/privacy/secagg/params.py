"""SecAgg+ round parameters, the neighbour graph and the rule that plans them.

A round of SecAgg+ (Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020) runs over a public graph: each
client agrees pairwise masks with, and Shamir-shares its two secrets among, only its
``degree`` neighbours. :func:`plan_secagg` chooses that degree ``k`` and the threshold
``t`` from the cohort size ``n`` and the tolerated dropout fraction; the rule is in its
docstring. :class:`SecAggParams` is what every participant of the round agrees on, sent to
the clients as bytes (:meth:`SecAggParams.to_bytes`).

**The graph** is the Harary graph ``H(k, n)`` over a seeded random permutation of the
cohort (Bell et al. §4 use the same family): clients sit on a ring in a random order and
each is joined to the ``k // 2`` nearest on either side, plus the diametrically opposite
client when ``k`` is odd. It is k-regular, symmetric and k-connected (cutting it takes
``k`` removed clients), and ``k = n - 1`` is the complete graph — classic SecAgg (Bonawitz
et al. 2017).

**Only even degrees below the complete graph.** With an even ``k`` a client at the end of
an arc of survivors has at most ``k/2`` surviving neighbours, fewer than ``t = k/2 + 1``,
so no share count lets a coordinator that declares clients dropped rebuild its self mask:
the survivors' sum cannot be split into the sums of arcs. An odd ``k`` adds the antipodal
edge, which gives that client its ``t``-th neighbour: at ``n = 128``, ``k = 31`` a
coordinator that declares 60 clients dropped recovers the sums of a 32- and a 36-client
group. :class:`SecAggParams` therefore refuses an odd ``k < n - 1`` — the clients check it —
and the planner only picks even ones.

**A floor on survivors.** ``min_survivors`` (distributed DP's ``n_min``: the fewest clients
whose noise the accountant counted) is part of the parameters every client checks: a client
refuses to unmask unless the coordinator's declared survivor list — which it must send to
every client — holds at least that many clients and the client itself.

**The encoding is bound to the session.** ``encoding_digest`` is the SHA-256 of the
round's public update encoding (σ of the distributed-DP noise, the clip range, the
quantisation levels and bits, the shared subset's seed, …: :func:`encoding_digest`). A
client refuses a masked-input task whose encoding does not hash to it, and every client
derives the AES-GCM keys of the shares it exchanges with its neighbours from the digest
of the *whole* parameters (:attr:`SecAggParams.binding`). A coordinator that hands two
clients different parameters — a different encoding, σ = 0 for one, another floor —
therefore gets ciphertexts those clients cannot open: they refuse their masked inputs and
the round aborts before any input is released.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedpeft.errors import CodecError, ConfigError
from fedpeft.privacy.secagg.encoding import MAX_BITS
from fedpeft.privacy.secagg.errors import SecAggError
from fedpeft.privacy.secagg.wire import SERVER, Stage, decode_frame, encode_frame

__all__ = [
    "CORRECTNESS_BITS",
    "MIN_COHORT",
    "SECURITY_BITS",
    "SMALL_COHORT",
    "SecAggParams",
    "encoding_digest",
    "harary_neighbours",
    "plan_secagg",
    "survivor_floor",
]

#: Cohorts up to this size use the complete graph (classic SecAgg).
SMALL_COHORT = 10
#: sigma: the survivors' graph splits (the server would learn sums of parts) with
#: probability at most 2**-SECURITY_BITS.
SECURITY_BITS = 40
#: eta: a round aborts for lack of shares with probability at most 2**-CORRECTNESS_BITS
#: when clients drop independently at the tolerated rate.
CORRECTNESS_BITS = 20
#: largest cohort one round may plan (the id lists travel in every message)
MAX_CLIENTS = 1 << 16
#: smallest cohort secure aggregation runs for: with two clients each learns the other's
#: update from the released sum (its own subtracted); with three, one curious client
#: learns only the sum of the other two
MIN_COHORT = 3
_DIGEST = re.compile(r"[0-9a-f]{64}")


def encoding_digest(encoding: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a round's public update encoding
    (:class:`fedpeft.privacy.secagg.updates.SecureEncoding`, or the calibration statistics'
    ``StatsEncoding``, as ``to_dict()``), normalised through its ``from_dict`` so that both
    ends hash the same canonical JSON whatever the transport did to it (an integer clip
    range that came back as a float)."""
    from fedpeft.privacy.secagg.updates import SecureEncoding, StatsEncoding

    kind = StatsEncoding if encoding.get("kind") == "feature_stats" else SecureEncoding
    canonical = kind.from_dict(encoding).to_dict()
    body = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(b"fedpeft-secagg-encoding-v1 " + body.encode()).hexdigest()


def survivor_floor(cohort: int, dropout_fraction: float) -> int:
    """``n_min``: the fewest survivors of a cohort planned to lose ``dropout_fraction`` of
    its clients, ``cohort - floor(dropout_fraction · cohort)`` (the complete graph's
    deterministic bound; distributed DP sizes each client's noise for this many)."""
    return max(1, cohort - math.floor(dropout_fraction * cohort + 1e-9))


@dataclass(frozen=True)
class SecAggParams:
    """What every participant of one SecAgg+ round agrees on (all of it public)."""

    round: int
    clients: tuple[int, ...]
    """The cohort, sorted client ids."""
    threshold: int
    """t: shares needed to reconstruct a secret."""
    degree: int
    """k: neighbours per client (``n - 1``: complete graph, classic SecAgg)."""
    bits: int
    """b: masked arithmetic is mod ``2**b``."""
    length: int
    """m: integers per masked vector."""
    graph_seed: int
    """Public seed of the neighbour graph's random permutation."""
    min_survivors: int = 0
    """Fewest survivors with which a client unmasks (0: only the threshold's floor)."""
    encoding_digest: str = ""
    """:func:`encoding_digest` of the round's update encoding ("": none bound)."""

    def __post_init__(self) -> None:
        clients = tuple(int(c) for c in self.clients)
        object.__setattr__(self, "clients", clients)
        n = len(clients)
        if n < MIN_COHORT:
            raise ConfigError(
                "secagg.clients",
                f"a cohort needs at least {MIN_COHORT} clients, got {n} (with two, each "
                "learns the other's update from the sum)",
            )
        if n > MAX_CLIENTS:
            raise ConfigError("secagg.clients", f"at most {MAX_CLIENTS} clients, got {n}")
        if list(clients) != sorted(set(clients)):
            raise ConfigError("secagg.clients", "client ids must be sorted and distinct")
        if clients[0] < 0 or clients[-1] >= SERVER:
            raise ConfigError("secagg.clients", f"client ids must be in [0, {SERVER})")
        if self.round < 0:
            raise ConfigError("secagg.round", f"must be non-negative, got {self.round}")
        if not 1 <= self.degree <= n - 1:
            raise ConfigError("secagg.degree", f"must be in [1, {n - 1}] for {n} clients")
        if self.degree < 2 < n:
            raise ConfigError(
                "secagg.degree", f"must be at least 2 for {n} clients (degree 1 splits the graph)"
            )
        if self.degree % 2 and self.degree != n - 1:
            raise ConfigError(
                "secagg.degree",
                f"an odd degree {self.degree} below the complete graph ({n - 1}) adds "
                "antipodal edges that let a coordinator lying about dropouts split the "
                "survivors' sum; use an even degree",
            )
        if not 1 <= self.threshold <= self.degree:
            raise ConfigError(
                "secagg.threshold", f"must be in [1, degree={self.degree}], got {self.threshold}"
            )
        if not 1 <= self.bits <= MAX_BITS:
            raise ConfigError("secagg.bits", f"must be in [1, {MAX_BITS}], got {self.bits}")
        if self.length < 1:
            raise ConfigError("secagg.length", f"must be at least 1, got {self.length}")
        if not 0 <= self.graph_seed < 2**64:
            raise ConfigError("secagg.graph_seed", "must be in [0, 2**64)")
        if not 0 <= self.min_survivors <= n:
            raise ConfigError(
                "secagg.min_survivors", f"must be in [0, {n}], got {self.min_survivors}"
            )
        if self.encoding_digest and not _DIGEST.fullmatch(self.encoding_digest):
            raise ConfigError(
                "secagg.encoding_digest",
                f"must be 64 lowercase hex digits (SHA-256), got {self.encoding_digest!r}",
            )

    @property
    def survivor_floor(self) -> int:
        """Fewest declared survivors a client unmasks for: ``min_survivors``, and never
        fewer than the protocol's own ``t + 1``."""
        return max(self.min_survivors, self.threshold + 1)

    @functools.cached_property
    def binding(self) -> bytes:
        """SHA-256 of every parameter (the encoding's digest included), mixed into the keys
        of the shares clients exchange: clients given different parameters cannot open
        each other's shares, so the round aborts (see the module docstring)."""
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(b"fedpeft-secagg-params-v1 " + body.encode()).digest()

    def check_encoding(self, encoding: Mapping[str, Any] | None) -> None:
        """Refuse (:class:`SecAggError`) a masked-input task's encoding unless it is the
        one these parameters bind (parameters that bind none are refused: a coordinator
        could otherwise give clients of one cohort different noise or clipping)."""
        if not self.encoding_digest:
            raise SecAggError(f"round {self.round}: the round's parameters bind no encoding")
        if encoding is None:
            raise SecAggError("a masked-input task without the encoding its parameters bind")
        got = encoding_digest(encoding)
        if got != self.encoding_digest:
            raise SecAggError(
                f"round {self.round}: the task's encoding (sha256 {got[:12]}…) is not the one "
                f"the round's parameters bind (sha256 {self.encoding_digest[:12]}…); a "
                "coordinator sending clients different encodings is refused"
            )

    @functools.cached_property
    def _graph(self) -> dict[int, tuple[int, ...]]:
        return harary_neighbours(self.clients, self.degree, self.graph_seed)

    @functools.cached_property
    def _positions(self) -> dict[int, dict[int, int]]:
        return {c: {j: x for x, j in enumerate(nbrs, 1)} for c, nbrs in self._graph.items()}

    def neighbours(self, client_id: int) -> tuple[int, ...]:
        """The sorted neighbours of ``client_id`` in the round's graph."""
        try:
            return self._graph[client_id]
        except KeyError:
            raise SecAggError(f"client {client_id} is not in the round's cohort") from None

    def share_index(self, owner: int, holder: int) -> int:
        """Shamir x-coordinate (1..k) of the share of ``owner``'s secrets held by
        ``holder``: the holder's position in ``owner``'s sorted neighbour list, plus one."""
        try:
            return self._positions[owner][holder]
        except KeyError:
            raise SecAggError(f"client {holder} is not a neighbour of client {owner}") from None

    def to_bytes(self) -> bytes:
        """A framed message (stage ``PARAMS``, sender the server) with the fields as JSON."""
        body = json.dumps(asdict(self), separators=(",", ":")).encode()
        return encode_frame(Stage.PARAMS, self.round, SERVER, SERVER, body)

    @classmethod
    def from_bytes(cls, data: bytes) -> SecAggParams:
        try:
            frame = decode_frame(data)
        except CodecError as exc:
            raise SecAggError(f"bad secure-aggregation parameters message: {exc}") from exc
        if frame.stage != Stage.PARAMS or frame.sender != SERVER:
            raise SecAggError("not a secure-aggregation parameters message")
        try:
            fields = json.loads(bytes(frame.body))
            params = cls(
                round=int(fields["round"]),
                clients=tuple(int(c) for c in fields["clients"]),
                threshold=int(fields["threshold"]),
                degree=int(fields["degree"]),
                bits=int(fields["bits"]),
                length=int(fields["length"]),
                graph_seed=int(fields["graph_seed"]),
                min_survivors=int(fields["min_survivors"]),
                encoding_digest=str(fields.get("encoding_digest", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SecAggError(f"malformed secure-aggregation parameters: {exc}") from exc
        if params.round != frame.round:
            raise SecAggError("parameters frame and body name different rounds")
        return params


@functools.lru_cache(maxsize=16)
def harary_neighbours(
    clients: tuple[int, ...], degree: int, seed: int
) -> dict[int, tuple[int, ...]]:
    """Neighbour lists of the Harary graph ``H(degree, n)`` over the ring order given by a
    seeded permutation of ``clients`` (see the module docstring)."""
    n = len(clients)
    order = np.random.default_rng(seed).permutation(n)
    ring = [clients[i] for i in order]
    half = degree // 2
    offsets = [d for d in range(1, half + 1)] + [-d for d in range(1, half + 1)]
    if degree % 2:
        offsets.append(n // 2)
    out: dict[int, tuple[int, ...]] = {}
    for pos, cid in enumerate(ring):
        out[cid] = tuple(sorted({ring[(pos + d) % n] for d in offsets}))
    return out


def _binom_cdf_below(k: int, p: float, t: int) -> float:
    """P[Binomial(k, p) < t], summed exactly in floating point (k is at most a few
    thousand)."""
    if p >= 1.0:
        return 0.0
    if p <= 0.0:
        return 1.0 if t > 0 else 0.0
    total = 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    for j in range(min(t, k + 1)):
        log_term = math.lgamma(k + 1) - math.lgamma(j + 1) - math.lgamma(k - j + 1)
        total += math.exp(log_term + j * log_p + (k - j) * log_q)
    return total


def _graph_seed(seed: int, round_num: int) -> int:
    """The public seed of a round's graph permutation, hashed from the run's seed and the
    round number: a fresh graph every round that anyone holding the seed can recompute."""
    digest = hashlib.sha256(f"fedpeft-secagg-graph:{seed}:{round_num}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def plan_secagg(
    cohort: Sequence[int],
    *,
    length: int,
    bits: int,
    round_num: int,
    seed: int,
    dropout_fraction: float = 0.3,
    min_degree: int | None = None,
    min_survivors: int = 0,
    encoding: Mapping[str, Any] | None = None,
) -> SecAggParams:
    """Plan one SecAgg+ round: degree ``k`` and threshold ``t`` for ``n = len(cohort)``.

    The rule (after Bell et al. 2020, §3–4; δ = ``dropout_fraction``, σ =
    ``SECURITY_BITS`` = 40, η = ``CORRECTNESS_BITS`` = 20):

    * **Threshold** ``t = floor(k/2) + 1``. A client never reveals both kinds of share
      (self-mask seed and mask key) of the same peer, so a server that lies about who
      dropped collects at most ``k`` shares of a client's two secrets together and can
      never reach ``t`` of each (``2t > k``).
    * **Small cohorts** (``n <= SMALL_COHORT`` = 10) use the complete graph,
      ``k = n - 1``. Its guarantee is deterministic: the round completes whenever at most
      ``k - t`` clients drop (every survivor still has ``t`` live neighbours), so
      ``floor(δ·n) <= k - t`` is required.
    * **Larger cohorts** take the smallest even ``k >= max(min_degree, 2·ceil(log2 n))``
      (even: see the module docstring — an odd ``k`` lets a lying coordinator split the
      survivors) with both

      - *correctness*: ``n · P[Binomial(k, 1-δ) < t] <= 2**-η`` — with clients dropping
        independently at rate δ, every secret the server must rebuild keeps ``t`` live
        holders except with probability 2^-η (union bound over the ``n`` secrets);
      - *privacy of partial sums*: ``n · δ**floor(k/2) <= 2**-σ`` — on the Harary ring the
        survivors' graph can only split (which would reveal the sums of its parts) where
        ``floor(k/2)`` ring-consecutive clients all dropped.

      If no ``k < n - 1`` satisfies them, the complete graph is used under the
      deterministic condition above.

    ``k = O(log n)`` for fixed δ, as in SecAgg+; the constants make it large at high
    dropout (δ = 0.3 needs ``k ≈ 190`` at ``n = 1000``; ``n <= ~200`` gets the complete
    graph). Impossible settings raise :class:`fedpeft.errors.ConfigError` naming the field.

    ``min_survivors`` (distributed DP's ``n_min``) travels in the parameters: clients
    refuse to unmask for fewer declared survivors. ``encoding`` (the round's
    ``SecureEncoding.to_dict()``) is bound by its digest: clients refuse any other.
    """
    clients = _check_cohort(cohort, dropout_fraction, min_degree)
    n = len(clients)
    degree = _sparse_degree(n, dropout_fraction, min_degree) if n > SMALL_COHORT else None
    if degree is None:
        degree = _complete_degree(n, dropout_fraction)
    return SecAggParams(
        round=round_num,
        clients=clients,
        threshold=_threshold(degree),
        degree=degree,
        bits=bits,
        length=length,
        graph_seed=_graph_seed(seed, round_num),
        min_survivors=min_survivors,
        encoding_digest="" if encoding is None else encoding_digest(encoding),
    )


def _threshold(degree: int) -> int:
    """``t = floor(k/2) + 1``: the smallest t with ``2t > k``, so that the shares a lying
    server can collect of one client's two secrets never reach t of each."""
    return degree // 2 + 1


def _check_cohort(
    cohort: Sequence[int], dropout_fraction: float, min_degree: int | None
) -> tuple[int, ...]:
    """The cohort as sorted ids, after refusing what no degree can serve: fewer than two
    clients, a client listed twice, a dropout fraction outside [0, 1), or a minimum degree
    the cohort cannot have."""
    clients = tuple(sorted(int(c) for c in cohort))
    n = len(clients)
    if n < MIN_COHORT:
        raise ConfigError(
            "secagg.clients",
            f"secure aggregation needs at least {MIN_COHORT} clients, got {n} (with two, "
            "each learns the other's update from the sum)",
        )
    if len(set(clients)) != n:
        raise ConfigError("secagg.clients", "the cohort lists a client twice")
    if not (0.0 <= dropout_fraction < 1.0) or math.isnan(dropout_fraction):
        raise ConfigError("secagg.dropout_fraction", f"must be in [0, 1), got {dropout_fraction!r}")
    if min_degree is not None and not 1 <= min_degree <= n - 1:
        raise ConfigError(
            "secagg.min_degree", f"must be in [1, {n - 1}] for a cohort of {n}, got {min_degree}"
        )
    return clients


def _sparse_degree(n: int, dropout_fraction: float, min_degree: int | None) -> int | None:
    """The smallest even ``k < n - 1`` (from ``max(min_degree, 2·ceil(log2 n))``)
    that meets both probabilistic bounds of :func:`plan_secagg` — correctness (every
    secret keeps t live holders) and privacy of partial sums (the survivors' graph stays
    connected) — or None when none does and the complete graph must serve."""
    low = max(min_degree or 1, 2 * math.ceil(math.log2(n)))
    for k in range(low, n - 1):
        if k % 2:  # an odd k's antipodal edge lets a lying coordinator split the survivors
            continue
        fails = n * _binom_cdf_below(k, 1.0 - dropout_fraction, _threshold(k))
        splits = n * dropout_fraction ** (k // 2)
        if fails <= 2.0**-CORRECTNESS_BITS and splits <= 2.0**-SECURITY_BITS:
            return k
    return None


def _complete_degree(n: int, dropout_fraction: float) -> int:
    """``k = n - 1``, the complete graph, whose guarantee is deterministic: the round
    completes whenever at most ``k - t`` clients drop. Refuses a dropout fraction that
    tolerates more, since then no graph can promise the round."""
    k = n - 1
    t = _threshold(k)
    tolerated = math.floor(dropout_fraction * n)
    if tolerated > k - t:
        raise ConfigError(
            "secagg.dropout_fraction",
            f"{dropout_fraction} of {n} clients is {tolerated} dropouts, but the complete "
            f"graph (k={k}, t={t}) completes only with at most {k - t}; lower the "
            f"dropout fraction or use a larger cohort",
        )
    return k
