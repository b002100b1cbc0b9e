"""Run search: MLflow's filter syntax parsed with errors that name the token, and evaluated the same on SQLite
and PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelmill.config import Settings
from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.training import Runs, start_run
from modelmill.training.search import parse_filter, parse_order_by

# (name, experiment, params, metrics, tags, status)
RUNS = [
    ("a", "exp1", {"max_depth": 6, "model": "CNN", "lr": 0.1}, {"auc": 0.81, "loss": 0.3}, {"data set": "flights-2013"},
     "finished"),
    ("b", "exp1", {"max_depth": "6.0", "model": "cnn", "lr": 0.01}, {"auc": 0.72}, {"data set": "Flights-2014"},
     "finished"),
    ("c", "exp1", {"max_depth": 4, "model": "RNN", "lr": 0.2}, {"auc": 0.65, "loss": 0.5}, {}, "finished"),
    ("d", "exp2", {"max_depth": 10, "model": "CNN"}, {"auc": 0.90}, {"data set": "clicks"}, "failed"),
    ("e", "exp2", {"model": "it's"}, {}, {}, "finished"),
]


def _populate(project: Project) -> dict[str, str]:
    """The five runs of RUNS, one millisecond apart (a first, e newest); name -> run id."""
    ids = {}
    for name, experiment, params, metrics, tags, status in RUNS:
        run = start_run(experiment, project=project, name=name, tags=tags)
        run.log_params(params)
        for key, value in metrics.items():
            run.log_metric(key, value - 0.5, step=0)  # an earlier point: only the last one counts
            run.log_metric(key, value, step=1)
        run.end(status)
        ids[name] = run.run_id
        time.sleep(0.002)
    return ids


def _names(project: Project, filter_string: str, **kwargs: object) -> list[str]:
    return [str(r.name) for r in Runs(project).search(filter_string, **kwargs)]  # type: ignore[arg-type]


def _check(project: Project) -> None:
    ids = _populate(project)
    newest_first = ["e", "d", "c", "b", "a"]
    assert _names(project, "") == newest_first
    # the example: the last auc (not the step-0 one) and max_depth 6 read as a number ("6" and "6.0")
    assert _names(project, "metrics.auc > 0.7 and params.max_depth = 6") == ["b", "a"]
    assert _names(project, "metrics.auc > 0.7 AND params.max_depth = '6'") == ["a"]  # quoted: a string, as MLflow
    assert _names(project, "metrics.auc >= 0.72 and metrics.auc <= 0.81") == ["b", "a"]
    assert _names(project, "metrics.auc != 0.72") == ["d", "c", "a"]  # e has no auc: never matched, != too
    assert _names(project, "metrics.auc < 0.7") == ["c"]
    assert _names(project, "metric.loss = 0.3") == ["a"]
    assert _names(project, "params.lr < 0.1") == ["b"]  # e and d have no lr
    assert _names(project, "params.max_depth > 5") == ["d", "b", "a"]
    assert _names(project, "params.model = 'CNN'") == ["d", "a"]
    assert _names(project, 'params.model != "CNN"') == ["e", "c", "b"]
    assert _names(project, "params.model LIKE 'C%'") == ["d", "a"]
    assert _names(project, "params.model ILIKE 'c_n'") == ["d", "b", "a"]
    assert _names(project, "params.model = 'it''s'") == ["e"]
    assert _names(project, "tags.`data set` ILIKE '%flights%'") == ["b", "a"]
    assert _names(project, 'tags."data set" LIKE \'flights%\'') == ["a"]
    assert _names(project, "attributes.status = 'FAILED'") == ["d"]
    assert _names(project, "attributes.status != 'failed' and attributes.experiment = 'exp2'") == ["e"]
    assert _names(project, "attributes.run_name = 'c'") == ["c"]
    assert _names(project, f"attributes.run_id = '{ids['b']}'") == ["b"]
    b = Runs(project).get(ids["b"])
    assert _names(project, f"attributes.start_time > {b.start_time * 1000 + 0.5:.3f}") == ["e", "d", "c"]  # milliseconds
    assert _names(project, "", experiments=["exp2"]) == ["e", "d"]
    assert _names(project, "metrics.auc > 0", experiments=["exp1", "nope"]) == ["c", "b", "a"]

    # order: by each key, runs without the key last in either direction; ties and the rest newest first
    assert _names(project, "", order_by=["metrics.auc DESC"]) == ["d", "a", "b", "c", "e"]
    assert _names(project, "", order_by=["metrics.auc"]) == ["c", "b", "a", "d", "e"]
    assert _names(project, "", order_by=["params.max_depth ASC"]) == ["c", "b", "a", "d", "e"]  # numbers: 4 < 6 < 10
    assert _names(project, "", order_by=["params.model", "metrics.auc DESC"]) == ["d", "a", "c", "b", "e"]
    assert _names(project, "", order_by=["attributes.start_time"]) == ["a", "b", "c", "d", "e"]
    assert _names(project, "", order_by=["metrics.auc DESC"], max_results=2) == ["d", "a"]
    found = Runs(project).search("metrics.auc > 0.8 and tags.`data set` = 'flights-2013'")
    assert [(r.params["max_depth"], r.tags, r.metrics["auc"]["last"], r.metrics["auc"]["count"]) for r in found] == [
        ("6", {"data set": "flights-2013"}, 0.81, 2)]


def test_search_on_sqlite(tmp_path: Path) -> None:
    with Project(Settings.defaults(home=tmp_path)) as project:
        _check(project)


def test_search_on_postgres(tmp_path: Path, pg_url: str) -> None:
    with Project(Settings.defaults(home=tmp_path).replace(db=pg_url)) as project:
        _check(project)


@pytest.mark.parametrize(("text", "token", "words"), [
    ("metrics.auc >> 0.7", ">>", "unknown comparator '>>' at character 13"),
    ("metrics.auc == 0.7", "==", "use =, !=, <, <=, >, >=, LIKE or ILIKE"),
    ("metrics.auc > 0.7 or metrics.auc < 0.2", "or", "'or' at character 19 is not supported"),
    ("metrix.auc > 1", "metrix.auc", "unknown entity 'metrix'"),
    ("attributes.colour = 'red'", "attributes.colour", "unknown attribute 'colour'"),
    ("metrics.auc > 'high'", "'high'", "compared with numbers only"),
    ("attributes.start_time > 'today'", "'today'", "start_time, compared with numbers only"),
    ("params.model = CNN", "CNN", "write 'CNN' in quotes"),
    ("params.version = 1.2.3", "1.2.3", "neither a number nor a quoted string"),
    ("metrics.auc LIKE '0.%'", "LIKE", "compares strings"),
    ("params.model LIKE C%", "C%", "write 'C%' in quotes"),
    ("params.model LIKE 6", "6", "takes a quoted pattern, like '%6%'"),
    ("params.lr < '0.1'", "<", "is a quoted string"),
    ("metrics.auc > 0.7 and", None, "ends after 'and'"),
    ("metrics.auc > 0.7 metrics.loss < 1", "metrics.loss", "expected 'and' at character 19"),
    ("metrics.auc", "metrics.auc", "has no comparator and value"),
    ("metrics.auc >", ">", "no value after metrics.auc >"),
    ("params.model = 'unclosed", "'unclosed", "close the quote"),
    ("auc > 0.7", "auc", "expected a key like metrics.auc"),
    ("metrics.`` > 1", "metrics.``", "names no key"),
], ids=lambda v: str(v)[:30])
def test_a_bad_filter_is_an_input_error_naming_the_token(text: str, token: str | None, words: str) -> None:
    with pytest.raises(InputError) as info:
        parse_filter(text)
    assert info.value.field == "filter" and words in info.value.message, info.value.message
    if token is not None:
        assert info.value.value == token, info.value.value


@pytest.mark.parametrize(("item", "token"), [
    ("metrics.auc DOWN", "DOWN"), ("metrics.auc DESC ASC", "ASC"), ("DESC", "DESC"), ("colour.x", "colour.x"),
])
def test_a_bad_order_by_names_the_token(item: str, token: str) -> None:
    with pytest.raises(InputError) as info:
        parse_order_by([item])
    assert info.value.field == "order_by" and info.value.value in (token, item), info.value.message


def test_max_results_is_bounded(tmp_path: Path) -> None:
    with Project(Settings.defaults(home=tmp_path)) as project:
        for bad in (0, -1, 100_001):
            with pytest.raises(InputError, match="max_results"):
                Runs(project).search("", max_results=bad)
