"""A synthetic click stream with known ground truth, for scale and for measuring detectors.

Users have fixed traits; each impression's click follows a known logistic
model. Two things are planted on purpose and reported back, so that error
rates of drift detectors and A/B tests can be measured, not guessed:

- ``drift_at``: from that time on, ``session_len`` shifts by ``drift_shift``
  standard deviations and the device mix changes;
- ``ab_lift``: users hashed to the treatment arm click with log-odds
  raised by ``ab_lift``.

    >>> gen = ClickStream(users=1_000, seed=7)
    >>> chunk = next(gen.chunks(5_000, chunk_size=5_000))
    >>> len(chunk), sorted(chunk.columns)[:3]
    (5000, ['arm', 'clicked', 'country'])
    >>> bool(0.02 < chunk["clicked"].mean() < 0.5)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pandas as pd

__all__ = ["ClickStream"]

COUNTRIES = np.array(["us", "de", "fr", "br", "in", "jp"])
DEVICES = np.array(["ios", "android", "web"])


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClickStream:
    """Settings of the generator; ``chunks`` produces the events."""

    users: int = 1_000_000
    seed: int = 0
    start: pd.Timestamp = dataclasses.field(default_factory=lambda: pd.Timestamp("2024-01-01", tz="UTC"))
    events_per_second: float = 200.0
    drift_at: pd.Timestamp | None = None
    drift_shift: float = 0.0
    ab_lift: float = 0.0
    base_logit: float = -2.2

    def user_traits(self) -> pd.DataFrame:
        """One row per user: country, device, tenure (days) and a latent click propensity."""
        rng = np.random.default_rng(self.seed)
        n = self.users
        return pd.DataFrame({
            "user_id": np.arange(n, dtype=np.int64),
            "country": COUNTRIES[rng.choice(len(COUNTRIES), n, p=[0.35, 0.15, 0.1, 0.15, 0.15, 0.1])],
            "device": DEVICES[rng.choice(len(DEVICES), n, p=[0.4, 0.4, 0.2])],
            "tenure_days": rng.gamma(2.0, 120.0, n),
            "propensity": rng.normal(0.0, 0.6, n),
            "arm": np.where(_hash01(np.arange(n, dtype=np.uint64), self.seed) < 0.5, "control", "treatment"),
        })

    def chunks(self, events: int, *, chunk_size: int = 1_000_000) -> Iterator[pd.DataFrame]:
        """``events`` impressions in time order, ``chunk_size`` at a time."""
        traits = self.user_traits()
        rng = np.random.default_rng(self.seed + 1)
        device_codes = pd.Categorical(traits["device"], categories=DEVICES).codes
        made = 0
        while made < events:
            n = min(chunk_size, events - made)
            users = rng.integers(0, self.users, n)
            gaps = rng.exponential(1.0 / self.events_per_second, n)
            offsets = made / self.events_per_second + np.cumsum(gaps)
            ts = self.start + pd.to_timedelta(offsets, unit="s")
            session = rng.lognormal(3.0, 0.5, n)
            device = device_codes[users].copy()
            if self.drift_at is not None:
                drifted = np.asarray(ts >= self.drift_at)
                session = np.where(drifted, session * np.exp(self.drift_shift * 0.5), session)
                flip = drifted & (rng.random(n) < 0.3)
                device = np.where(flip, 2, device)  # more web traffic after the drift point
            treated = traits["arm"].to_numpy()[users] == "treatment"
            logit = (self.base_logit + traits["propensity"].to_numpy()[users] + 0.015 * (session - 20.0)
                     - 0.001 * traits["tenure_days"].to_numpy()[users] + np.where(device == 0, 0.2, 0.0)
                     + np.where(treated, self.ab_lift, 0.0))
            clicked = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
            yield pd.DataFrame({
                "event_id": np.arange(made, made + n, dtype=np.int64),
                "ts": ts,
                "user_id": users,
                "country": traits["country"].to_numpy()[users],
                "device": DEVICES[device],
                "tenure_days": traits["tenure_days"].to_numpy()[users],
                "session_len": session,
                "arm": traits["arm"].to_numpy()[users],
                "clicked": clicked.astype(np.int8),
            })
            made += n


def _hash01(values: np.ndarray, salt: int) -> np.ndarray:
    """A fast, stable hash of unsigned integers to [0, 1) (splitmix64)."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15) * np.uint64(salt + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
