"""The experiment page over time: the experiments stage's own analysis at each look, through the console."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import numpy as np
import pytest
from starlette.testclient import TestClient

from modelmill.console import timeline
from modelmill.errors import InputError
from modelmill.experiments import Arm, Experiment, Experiments
from modelmill.project import Project
from tests.console.conftest import EMPTY, HOURS, console_client
from tests.prediction_log import prediction_log


def test_cumulative_looks_grow_and_the_last_is_the_analysis_itself(project: Project, served: Experiment) -> None:
    exp, looks = timeline.looks(project, "ab", window_s=3600)
    assert exp.name == "ab" and len(looks) == HOURS
    sizes = [sum(c.control.n + c.treatment.n for c, _ in look.analysis.comparisons) if look.analysis else 0
             for look in looks]
    assert sizes == sorted(sizes) and sizes[-1] == (HOURS - len(EMPTY)) * 120
    assert sizes[EMPTY[0]] == sizes[EMPTY[0] - 1]  # an hour with nothing adds nothing to the cumulative look
    now = Experiments(project).analyze("ab").as_dict()
    last = looks[-1].analysis
    assert last is not None
    assert last.as_dict()["p_value"] == now["p_value"] and last.as_dict()["decision"] == now["decision"]
    assert [look.start for look in looks] == [looks[0].start] * HOURS


def test_per_window_looks_have_no_data_where_nothing_was_served(project: Project, served: Experiment) -> None:
    _, looks = timeline.looks(project, "ab", view="window", window_s=3600)
    empty = [i for i, look in enumerate(looks) if look.analysis is None]
    assert empty == list(EMPTY)
    assert all(looks[i].no_data for i in empty)
    sizes = [sum(c.control.n + c.treatment.n for c, _ in look.analysis.comparisons)
             for look in looks if look.analysis is not None]
    assert sum(sizes) == (HOURS - len(EMPTY)) * 120  # every request in exactly one window
    assert [looks[i].start for i in range(1, HOURS)] == [looks[i - 1].end for i in range(1, HOURS)]


def test_sequential_looks_use_the_sequential_test(project: Project, served: Experiment) -> None:
    _, looks = timeline.looks(project, "ab", window_s=3600, test="sequential")
    tests = {c.test for look in looks if look.analysis for c, _ in look.analysis.comparisons}
    assert tests == {"sequential"}
    with pytest.raises(Exception, match="test"):
        timeline.looks(project, "ab", test="magic")


@pytest.fixture
def client(project: Project) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with console_client(project) as c:
        yield c


def test_the_page_draws_each_look_with_gaps_and_the_decision_per_look(
        client: tuple[TestClient, dict[str, str]], served: Experiment) -> None:
    c, auth = client
    r = c.get("/ui/experiments/ab?view=window&window=1h", headers=auth)
    assert r.status_code == 200, r.text
    over = r.text[r.text.index('id="over-time"'):]
    figures = re.findall(r'<figure class="chart".*?</figure>', over, flags=re.S)
    assert len(figures) == 4
    assert all('class="gap"' in f for f in figures)  # hours 3 and 4 are gaps in every chart
    assert 'class="band"' in figures[0] and 'class="band"' in figures[1]  # intervals per variant and of the lift
    assert "alpha" in figures[2] and "mismatch below" in figures[3]
    decisions = over[over.index("Decision at each look"):]
    assert decisions.count("<tr>") == 1 + HOURS  # the header, one row per look (one treatment)
    assert decisions.count("no data") >= len(EMPTY)
    sequential = c.get("/ui/experiments/ab?window=1h&test=sequential", headers=auth)
    assert sequential.status_code == 200 and "sequential boundary (mSPRT)" in sequential.text
    assert "anytime-valid confidence sequence" in sequential.text


@pytest.mark.parametrize("query, field", [("view=sideways", "view"), ("window=soon", "window"),
                                          ("test=magic", "test")])
def test_bad_query_is_a_400_naming_the_field(client: tuple[TestClient, dict[str, str]], served: Experiment,
                                             query: str, field: str) -> None:
    c, auth = client
    r = c.get(f"/ui/experiments/ab?{query}", headers=auth)
    assert r.status_code == 400 and field in r.text and "Traceback" not in r.text


def test_an_experiment_without_a_log_is_no_data(client: tuple[TestClient, dict[str, str]], project: Project) -> None:
    Experiments(project).create(Experiment(name="quiet", model="m", primary_metric="output",
                                           variants=(Arm("control", 50, 1), Arm("treatment", 50, 2))))
    c, auth = client
    r = c.get("/ui/experiments/quiet", headers=auth)
    assert r.status_code == 200
    over = r.text[r.text.index('id="over-time"'):]
    assert "No data" in over and "<figure" not in over


def _straightforward(project: Project, name: str, *, view: str, window_s: float | None,
                     test: str | None) -> list[timeline.Look]:
    """The looks as first written: one read of the log, and the experiments stage's own
    ``analyze_log`` on every slice of it (what the reduced looks must equal exactly)."""
    store = Experiments(project)
    exp, frame = store.log(name)
    at = timeline._epochs(frame["ts"])
    first = float(exp.created_at)
    out, previous = [], first
    for end in timeline.cutoffs(first, float(at.max()), window_s):
        start = first if view == "cumulative" else previous
        part = frame[(at >= start if start == first else at > start) & (at <= end)]
        try:
            out.append(timeline.Look(start, end, store.analyze_log(exp, part, test=test)))
        except InputError as exc:
            out.append(timeline.Look(start, end, None, exc.message))
        previous = end
    return out


@pytest.fixture
def repeat_visits(project: Project) -> Experiment:
    """Experiment ``multi`` on model ``m``: three variants (weights 50/25/25, lower is better, BH), 400
    users making 1 to 9 requests each over 6 hours with outputs of many digits, written out of time order,
    nothing in hour 2, and only one user in the first hour (an early look has one variant)."""
    store = Experiments(project)
    exp = store.create(Experiment(name="multi", model="m", primary_metric="output", direction="lower",
                                  alpha=0.1, correction="bh",
                                  variants=(Arm("control", 50, 1), Arm("b", 25, 2), Arm("c", 25, 3))))
    assigner = exp.assigner()
    start = dt.datetime.fromtimestamp(exp.created_at, dt.UTC) + dt.timedelta(seconds=1)
    rng = np.random.default_rng(11)
    at: dict[str, dt.datetime] = {}
    rows = []
    for u in range(400):
        user = f"u{u}"
        v = assigner.assign(user)
        for k in range(int(rng.integers(1, 10))):
            hour = 0 if u == 0 else int(rng.choice([0, 1, 3, 4, 5]))
            rows.append((f"r{u}-{k}", user, v, start + dt.timedelta(hours=hour, seconds=float(rng.uniform(0, 3500))),
                         float(rng.gamma(2.0, 0.137) + {"control": 0.0, "b": -0.03, "c": 0.01}[v])))
    # hour 0 holds only the first user's requests: the early looks have one variant, nothing to compare
    rows = [r for r in rows if r[3] >= start + dt.timedelta(hours=1) or r[1] == "u0"]
    order = rng.permutation(len(rows))  # the log is not in time order
    with prediction_log(project.offline, at=at) as log:
        for i in order:
            rid, user, v, when, out = rows[i]
            at[rid] = when
            version = {"control": 1, "b": 2, "c": 3}[v]
            log.append(rid, "m", version, v, user, ("x",), np.array([[out]]), np.array([out]), 1.0)
    return exp


@pytest.mark.parametrize("view, window_s", [("cumulative", None), ("cumulative", 1800.0), ("window", 3600.0),
                                            ("window", None)])
@pytest.mark.parametrize("test", [None, "welch", "sequential", "delta", "ztest"])
def test_looks_equal_the_analysis_of_each_slice_exactly(project: Project, repeat_visits: Experiment,
                                                         view: str, window_s: float | None, test: str | None) -> None:
    _, fast = timeline.looks(project, "multi", view=view, window_s=window_s, test=test)
    slow = _straightforward(project, "multi", view=view, window_s=window_s, test=test)
    assert len(fast) == len(slow) >= 6
    # repr shows every float to its last digit (and nan as nan): the same numbers, not close ones
    assert [repr(look) for look in fast] == [repr(look) for look in slow]
    analysed = [look for look in fast if look.analysis is not None]
    if test == "ztest":  # a ratio metric: every look with data is refused, as analyze refuses it
        said = [look.no_data or "" for look in fast]
        assert not analysed and all("z-test" in m or "no logged predictions" in m for m in said)
        assert sum("z-test" in m for m in said) >= 4
        return
    assert analysed and any(look.analysis is None for look in fast)  # early or empty looks are no data
    assert {len(look.analysis.comparisons) for look in analysed if look.analysis} == {2}  # b and c against the control
    if view == "cumulative":
        last = analysed[-1].analysis
        assert last is not None
        assert repr(last) == repr(Experiments(project).analyze("multi", test=test))


def test_a_unit_in_two_variants_takes_the_analysis_path(project: Project, repeat_visits: Experiment) -> None:
    start = dt.datetime.fromtimestamp(repeat_visits.created_at, dt.UTC)
    at = {"stray": start + dt.timedelta(hours=4, minutes=30)}
    with prediction_log(project.offline, at=at) as log:  # u5 also logged under another variant: not sticky
        other = "b" if repeat_visits.assigner().assign("u5") != "b" else "c"
        log.append("stray", "m", 2, other, "u5", ("x",), np.array([[0.3]]), np.array([0.3]), 1.0)
    _, fast = timeline.looks(project, "multi", window_s=3600.0)
    slow = _straightforward(project, "multi", view="cumulative", window_s=3600.0, test=None)
    assert [repr(look) for look in fast] == [repr(look) for look in slow]
    assert fast[-1].analysis is None and "more than one variant" in (fast[-1].no_data or "")
    assert fast[1].analysis is not None  # before the stray request every look is analysed
