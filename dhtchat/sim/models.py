"""Network models for the simulator: latency, loss and churn.

Every model draws from a ``random.Random`` passed in by the caller (one stream per node or
per link), never from global state, so a run is a pure function of its seed.

Latency models return a one-way delay in seconds for a datagram from node ``src`` to node
``dst`` (node indices):

* ``constant`` — the same delay for every datagram.
* ``uniform`` — uniform in ``[low, high]`` per datagram.
* ``lognormal`` — per datagram, parameterised by its median and the sigma of the underlying
  normal (Internet RTTs are heavy-tailed; cf. the King data set, Gummadi et al. IMW 2002).
* ``pairwise`` — a fixed base delay per node pair (lognormal, derived from the pair and the
  seed, so it needs no N x N table, and at least ``floor``) plus uniform jitter per datagram.
* ``matrix`` — base delays from a file (one row per line, whitespace separated, milliseconds,
  like the King/Meridian matrices); node ``i`` maps to row ``i mod rows``.

Churn: session and downtime lengths are drawn from exponential, Weibull or Pareto
distributions; :data:`CHURN_PRESETS` lists presets with their sources (docs/simulator.md).
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class LatencyModel(Protocol):
    """One-way delay of a datagram from node ``src`` to node ``dst``."""

    def delay(self, src: int, dst: int, rng: random.Random) -> float: ...

    def min_delay(self) -> float:
        """A lower bound of every delay (a parallel run's lookahead)."""
        ...


@dataclass(frozen=True)
class ConstantLatency:
    """Every datagram takes ``seconds``."""

    seconds: float = 0.05

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        return self.seconds

    def min_delay(self) -> float:
        return self.seconds


@dataclass(frozen=True)
class UniformLatency:
    """Uniform in ``[low, high]`` seconds."""

    low: float = 0.01
    high: float = 0.1

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def min_delay(self) -> float:
        return min(self.low, self.high)


@dataclass(frozen=True)
class LogNormalLatency:
    """Lognormal per datagram with the given median (seconds) and sigma."""

    median: float = 0.05
    sigma: float = 0.6
    cap: float = 2.0

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        return min(self.cap, rng.lognormvariate(math.log(self.median), self.sigma))

    def min_delay(self) -> float:
        return 0.0  # no floor


_MAX_CACHED_PAIRS = 1 << 21


def _pair_unit(seed: int, a: int, b: int) -> float:
    lo, hi = (a, b) if a <= b else (b, a)
    digest = hashlib.blake2b(f"{seed}:{lo}:{hi}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


@dataclass(frozen=True)
class PairwiseLatency:
    """A fixed lognormal base delay per node pair (symmetric) plus uniform jitter."""

    median: float = 0.05
    sigma: float = 0.6
    jitter: float = 0.005
    seed: int = 0
    cap: float = 2.0
    floor: float = 0.0  # no pair is closer (propagation); > 0 allows parallel runs

    # base delay per pair (a pure function of the pair: a cache, cleared when it grows large)
    _bases: dict[int, float] = field(default_factory=dict, compare=False, repr=False)

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        pair = (src << 32 | dst) if src <= dst else (dst << 32 | src)
        base = self._bases.get(pair)
        if base is None:
            u = _pair_unit(self.seed, src, dst)
            # inverse CDF of the lognormal through the normal quantile
            base = min(self.cap, self.median * math.exp(self.sigma * _normal_quantile(u)))
            base = max(base, self.floor)
            if len(self._bases) >= _MAX_CACHED_PAIRS:
                self._bases.clear()
            self._bases[pair] = base
        # rng.uniform(0.0, jitter) is 0.0 + jitter * rng.random(): the same float, one call
        return base + self.jitter * rng.random()

    def min_delay(self) -> float:
        return min(self.floor, self.cap)


@dataclass(frozen=True)
class MatrixLatency:
    """Base delays (ms) from a square matrix file, plus uniform jitter (s)."""

    rows: tuple[tuple[float, ...], ...]
    jitter: float = 0.0

    @classmethod
    def from_file(cls, path: Path, jitter: float = 0.0) -> MatrixLatency:
        """Load a whitespace-separated matrix of one-way delays in milliseconds."""
        rows = []
        for line in path.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                rows.append(tuple(float(x) for x in line.split()))
        if not rows or any(len(r) != len(rows) for r in rows):
            raise ValueError(f"{path}: expected a square matrix of delays in ms")
        if any(x < 0 or math.isnan(x) for r in rows for x in r):
            raise ValueError(f"{path}: delays must be non-negative numbers")
        return cls(tuple(rows), jitter)

    def delay(self, src: int, dst: int, rng: random.Random) -> float:
        n = len(self.rows)
        base = self.rows[src % n][dst % n] / 1000.0
        return base + (rng.uniform(0.0, self.jitter) if self.jitter else 0.0)

    def min_delay(self) -> float:
        return min(min(row) for row in self.rows) / 1000.0


def _normal_quantile(p: float) -> float:
    """Inverse CDF of the standard normal (Acklam's rational approximation, |err| < 1.2e-9)."""
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02,
         1.383577518672690e02, -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02,
         6.680131188771972e01, -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00,
         -2.549732539343734e00, 4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00,
         3.754408661907416e00)
    low = 0.02425
    if p < low:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    if p > 1 - low:
        q = math.sqrt(-2 * math.log(1 - p))
        return -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    q = p - 0.5
    r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)


# ------------------------------------------------------------------------------- churn


@dataclass(frozen=True)
class Distribution:
    """A positive random duration in seconds.

    ``kind``: ``exponential`` (``mean``), ``weibull`` (``scale``, ``shape``) or ``pareto``
    (``scale`` = minimum, ``shape`` = alpha).
    """

    kind: str
    mean: float = 0.0
    scale: float = 0.0
    shape: float = 1.0

    def sample(self, rng: random.Random) -> float:
        """One duration (seconds)."""
        if self.kind == "exponential":
            return rng.expovariate(1.0 / self.mean)
        if self.kind == "weibull":
            return rng.weibullvariate(self.scale, self.shape)
        if self.kind == "pareto":
            return self.scale * rng.paretovariate(self.shape)
        raise ValueError(f"unknown distribution {self.kind!r}")

    def median(self) -> float:
        """The distribution's median (for documentation and sanity checks)."""
        if self.kind == "exponential":
            return self.mean * math.log(2)
        if self.kind == "weibull":
            return float(self.scale * math.log(2) ** (1 / self.shape))
        if self.kind == "pareto":
            return self.scale * 2 ** (1 / self.shape)
        raise ValueError(f"unknown distribution {self.kind!r}")


@dataclass(frozen=True)
class ChurnModel:
    """Alternating online sessions and offline periods per node."""

    session: Distribution
    downtime: Distribution
    source: str = ""


def weibull_with_median(median: float, shape: float) -> Distribution:
    """A Weibull distribution of the given median (seconds) and shape."""
    return Distribution("weibull", scale=median / math.log(2) ** (1 / shape), shape=shape)


CHURN_PRESETS: dict[str, ChurnModel] = {
    # Steiner, En-Najjary & Biersack, "A Global View of KAD", IMC 2007 / ToN 2009: KAD session
    # times are heavy-tailed and fit a Weibull distribution; median session ~ 1 h.
    "kad": ChurnModel(
        session=weibull_with_median(3600.0, 0.5),
        downtime=weibull_with_median(4 * 3600.0, 0.5),
        source="Steiner et al., IMC 2007: Weibull sessions (shape ~0.5), median ~1 h",
    ),
    # Trautwein et al., "Design and Evaluation of IPFS", SIGCOMM 2022, sec. 5: about half of
    # the peers in the IPFS DHT stay online for less than ~2 h. Weibull with median 2 h.
    "ipfs": ChurnModel(
        session=weibull_with_median(2 * 3600.0, 0.6),
        downtime=Distribution("exponential", mean=6 * 3600),
        source="Trautwein et al., SIGCOMM 2022: median session ~2 h, heavy tail",
    ),
    # Stutzbach & Rejaie, "Understanding Churn in Peer-to-Peer Networks", IMC 2006: session
    # lengths in Kad/BitTorrent/Gnutella are heavy-tailed (Weibull/log-normal), not
    # exponential; an exponential preset is kept as the textbook reference model.
    "exponential-1h": ChurnModel(
        session=Distribution("exponential", mean=3600.0),
        downtime=Distribution("exponential", mean=3600.0),
        source="memoryless reference model, mean session 1 h",
    ),
    "pareto": ChurnModel(
        session=Distribution("pareto", scale=900.0, shape=1.5),
        downtime=Distribution("pareto", scale=900.0, shape=1.5),
        source="Pareto(alpha=1.5, min 15 min) as in Li et al., IPTPS 2005 churn studies",
    ),
}


def latency_from_spec(spec: dict[str, object], seed: int) -> LatencyModel:
    """Build a latency model from a scenario table (``{"model": "lognormal", ...}``)."""
    kind = str(spec.get("model", "constant"))

    def num(name: str, default: float) -> float:
        value = spec.get(name, default)
        if not isinstance(value, int | float) or value < 0:
            raise ValueError(f"latency.{name} must be a non-negative number")
        return float(value)

    if kind == "constant":
        return ConstantLatency(num("ms", 50) / 1000)
    if kind == "uniform":
        return UniformLatency(num("low_ms", 10) / 1000, num("high_ms", 100) / 1000)
    if kind == "lognormal":
        return LogNormalLatency(num("median_ms", 50) / 1000, num("sigma", 0.6))
    if kind == "pairwise":
        return PairwiseLatency(num("median_ms", 50) / 1000, num("sigma", 0.6),
                               num("jitter_ms", 5) / 1000, seed,
                               floor=num("floor_ms", 0) / 1000)
    if kind == "matrix":
        path = spec.get("file")
        if not isinstance(path, str):
            raise ValueError("latency.file is required for the matrix model")
        return MatrixLatency.from_file(Path(path), num("jitter_ms", 0) / 1000)
    raise ValueError(f"unknown latency model {kind!r}")
