"""A synthetic click stream with known ground truth, for scale and for measuring detectors.

Users have fixed traits; each impression's click follows a known logistic
model. Two things are planted on purpose and reported back (:meth:`ClickStream.truth`),
so that error rates of drift detectors and A/B tests can be measured, not guessed:

- ``drift_at``: from that time on, ``session_len`` is ``exp(drift_shift / 2)`` times
  longer (``drift_shift`` standard deviations of its log) and 30% of impressions move to
  the web (the device mix changes); nothing else about an impression changes;
- ``ab_lift``: a treated impression clicks with its log-odds raised by ``ab_lift``.

Which impressions are treated is the caller's: a served experiment assigns users to
variants, and :meth:`ClickStream.clicks` draws each click given that assignment. Each
impression carries ``p_click``, its click probability untreated, so the true effect of
the treatment on any set of impressions is known exactly (:meth:`ClickStream.ab_effect`).
:meth:`ClickStream.chunks` assigns arms itself (users hashed 50/50) for use without a server.

    >>> gen = ClickStream(users=1_000, seed=7)
    >>> chunk = next(gen.chunks(5_000, chunk_size=5_000))
    >>> len(chunk), sorted(chunk.columns)[:3]
    (5000, ['affinity', 'arm', 'clicked'])
    >>> bool(0.02 < chunk["clicked"].mean() < 0.5)
    True
    >>> gen = ClickStream(users=1_000, drift_at=pd.Timestamp("2024-01-01 02:00", tz="UTC"), drift_shift=1.0,
    ...                   ab_lift=0.3)
    >>> before, after = gen.window(1, 2_000), gen.window(2, 2_000)
    >>> bool(after["session_len"].median() > 1.4 * before["session_len"].median())
    True
    >>> gen.truth().drifted_columns, gen.truth().ab_sign
    (('session_len', 'device'), 1)
    >>> bool(gen.ab_effect(after) > 0)
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["COUNTRIES", "DEVICES", "ClickStream", "GroundTruth"]

COUNTRIES = np.array(["us", "de", "fr", "br", "in", "jp"])
DEVICES = np.array(["ios", "android", "web"])
DRIFTED_COLUMNS = ("session_len", "device")


@dataclasses.dataclass(frozen=True)
class GroundTruth:
    """What the generator planted, to score detectors against."""

    drift_at: pd.Timestamp | None
    drifted_columns: tuple[str, ...]
    drift_shift: float
    ab_lift: float

    @property
    def ab_sign(self) -> int:
        """+1 when treatment raises clicks, -1 when it lowers them, 0 when it changes nothing."""
        return int(np.sign(self.ab_lift))

    def drifted(self, ts: pd.Timestamp) -> bool:
        """Whether traffic at ``ts`` is past the planted drift."""
        return self.drift_at is not None and self.drift_shift != 0.0 and ts >= self.drift_at

    def as_dict(self) -> dict[str, Any]:
        return {"drift_at": None if self.drift_at is None else self.drift_at.isoformat(),
                "drifted_columns": list(self.drifted_columns), "drift_shift": self.drift_shift,
                "ab_lift": self.ab_lift, "ab_sign": self.ab_sign}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClickStream:
    """Settings of the generator; :meth:`window` and :meth:`chunks` produce the impressions."""

    users: int = 1_000_000
    seed: int = 0
    start: pd.Timestamp = dataclasses.field(default_factory=lambda: pd.Timestamp("2024-01-01", tz="UTC"))
    events_per_second: float = 200.0
    drift_at: pd.Timestamp | None = None
    drift_shift: float = 0.0
    ab_lift: float = 0.0
    base_logit: float = -2.2

    def truth(self) -> GroundTruth:
        return GroundTruth(self.drift_at, DRIFTED_COLUMNS if self.drift_shift else (), self.drift_shift,
                           self.ab_lift)

    def user_traits(self) -> pd.DataFrame:
        """One row per user: country, device, tenure (days), a latent click propensity, an observable but
        noisy ``affinity`` score of it, and the arm :meth:`chunks` assigns."""
        rng = np.random.default_rng(self.seed)
        n = self.users
        propensity = rng.normal(0.0, 0.6, n)
        return pd.DataFrame({
            "user_id": np.arange(n, dtype=np.int64),
            "country": COUNTRIES[rng.choice(len(COUNTRIES), n, p=[0.35, 0.15, 0.1, 0.15, 0.15, 0.1])],
            "device": DEVICES[rng.choice(len(DEVICES), n, p=[0.4, 0.4, 0.2])],
            "tenure_days": rng.gamma(2.0, 120.0, n),
            "propensity": propensity,
            "affinity": propensity + rng.normal(0.0, 0.3, n),
            "arm": np.where(_hash01(np.arange(n, dtype=np.uint64), self.seed) < 0.5, "control", "treatment"),
        })

    def window(self, index: int, events: int, *, length: pd.Timedelta = pd.Timedelta(hours=1),
               traits: pd.DataFrame | None = None) -> pd.DataFrame:
        """The ``events`` impressions of window ``index`` (``[start + index·length, start + (index+1)·length)``)
        in time order, without clicks (draw them with :meth:`clicks`); the same index gives the same rows."""
        traits = self.user_traits() if traits is None else traits
        rng = np.random.default_rng([self.seed, 2, index])
        lo = self.start + index * length
        offsets = np.sort(rng.random(events)) * length.total_seconds()
        frame = self._impressions(traits, lo + pd.to_timedelta(offsets, unit="s"), rng)
        frame.insert(0, "event_id", np.arange(index * events, (index + 1) * events, dtype=np.int64))
        return frame

    def clicks(self, impressions: pd.DataFrame, treated: np.ndarray | None = None, *, seed: int = 0) -> np.ndarray:
        """Draw each impression's click (0/1), with ``ab_lift`` added to the log-odds of ``treated`` ones."""
        rng = np.random.default_rng([self.seed, 3, seed])
        p = self._treated_p(impressions, treated)
        return (rng.random(len(p)) < p).astype(np.int8)

    def ab_effect(self, impressions: pd.DataFrame) -> float:
        """The true mean change in click probability if every one of ``impressions`` were treated."""
        treated = self._treated_p(impressions, np.ones(len(impressions), dtype=bool))
        return float(np.mean(treated - impressions["p_click"].to_numpy()))

    def chunks(self, events: int, *, chunk_size: int = 1_000_000) -> Iterator[pd.DataFrame]:
        """``events`` impressions in time order, ``chunk_size`` at a time, clicks drawn with the users'
        own ``arm`` (hashed 50/50) as the treatment."""
        traits = self.user_traits()
        rng = np.random.default_rng(self.seed + 1)
        made = 0
        while made < events:
            n = min(chunk_size, events - made)
            gaps = rng.exponential(1.0 / self.events_per_second, n)
            offsets = made / self.events_per_second + np.cumsum(gaps)
            frame = self._impressions(traits, self.start + pd.to_timedelta(offsets, unit="s"), rng)
            frame.insert(0, "event_id", np.arange(made, made + n, dtype=np.int64))
            frame["arm"] = traits["arm"].to_numpy()[frame["user_id"].to_numpy()]
            treated = frame["arm"].to_numpy() == "treatment"
            frame["clicked"] = (rng.random(n) < self._treated_p(frame, treated)).astype(np.int8)
            yield frame
            made += n

    def _impressions(self, traits: pd.DataFrame, ts: pd.DatetimeIndex, rng: np.random.Generator) -> pd.DataFrame:
        n = len(ts)
        users = rng.integers(0, self.users, n)
        session = rng.lognormal(3.0, 0.5, n)
        device = pd.Categorical(traits["device"], categories=DEVICES).codes[users].astype(np.int64)
        flip = rng.random(n) < 0.3
        if self.drift_at is not None:
            drifted = np.asarray(ts >= self.drift_at)
            session = np.where(drifted, session * np.exp(self.drift_shift * 0.5), session)
            device = np.where(drifted & flip, 2, device)  # more web traffic after the drift point
        logit = (self.base_logit + traits["propensity"].to_numpy()[users] + 0.015 * (session - 20.0)
                 - 0.001 * traits["tenure_days"].to_numpy()[users] + np.where(device == 0, 0.2, 0.0))
        return pd.DataFrame({
            "ts": ts,
            "user_id": users,
            "country": traits["country"].to_numpy()[users],
            "device": DEVICES[device],
            "tenure_days": traits["tenure_days"].to_numpy()[users],
            "affinity": traits["affinity"].to_numpy()[users],
            "session_len": session,
            "p_click": 1.0 / (1.0 + np.exp(-logit)),
        })

    def _treated_p(self, impressions: pd.DataFrame, treated: np.ndarray | None) -> np.ndarray:
        p = impressions["p_click"].to_numpy()
        if treated is None or self.ab_lift == 0.0:
            return p
        logit = np.log(p / (1.0 - p)) + np.where(np.asarray(treated, dtype=bool), self.ab_lift, 0.0)
        return 1.0 / (1.0 + np.exp(-logit))


def _hash01(values: np.ndarray, salt: int) -> np.ndarray:
    """A fast, stable hash of unsigned integers to [0, 1) (splitmix64)."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15) * np.uint64(salt + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
