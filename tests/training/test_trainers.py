"""Trainers: each passes modelmill.testing.check_trainer (fits, reaches a sane AUC on an easy problem, logs to
its run, registers under its flavor); then what train() and get_trainer() add."""

from __future__ import annotations

import numpy as np
import pytest

from modelmill.errors import InputError
from modelmill.project import Project
from modelmill.testing import check_trainer
from modelmill.testing.trainers import easy_frame
from modelmill.training import Runs, start_run
from modelmill.training.trainers import frame_to_xy, get_trainer, train


@pytest.mark.parametrize(("trainer", "params"), [
    ("sklearn-hgb", {"max_iter": 30}),
    ("lightgbm", {"n_estimators": 30, "n_jobs": 1}),
    ("xgboost", {"n_estimators": 30, "n_jobs": 1}),
    ("catboost", {"iterations": 30, "thread_count": 1}),
    ("torch-mlp", {"hidden": [16], "epochs": 8, "batch_size": 64, "lr": 0.1}),
])
def test_trainer_contract(project: Project, trainer: str, params: dict[str, object]) -> None:
    check_trainer(get_trainer(trainer, **params), project=project)


def test_train_splits_seeded_and_logs_the_split(project: Project) -> None:
    with start_run("trainers", project=project) as run:
        result = train("sklearn-hgb", easy_frame(), "late", run=run, max_iter=10)
    assert result.feature_names == ["a", "b", "c"]  # the text column is left out
    info = Runs(project).get(run.run_id)
    assert (info.params["trainer"], info.params["n_train"], info.params["n_valid"]) == ("sklearn-hgb", "480", "120")


def test_check_trainer_names_the_broken_promise(project: Project) -> None:
    class Misnamed:
        name, flavor = "misnamed", "sklearn"

        def fit(self, *args: object, **kwargs: object) -> object:
            return get_trainer("sklearn-hgb", max_iter=5).fit(*args, **kwargs)

    with pytest.raises(AssertionError, match="the result names trainer 'sklearn-hgb'"):
        check_trainer(Misnamed(), project=project)  # type: ignore[arg-type]


def test_bad_trainer_input_is_named() -> None:
    with pytest.raises(InputError, match="trainer"):
        get_trainer("no-such-trainer")
    with pytest.raises(InputError, match="params"):
        get_trainer("lightgbm", n_trees=3)
    with pytest.raises(InputError, match="label"):
        frame_to_xy(easy_frame(), "delay")
    three = easy_frame().assign(late=np.arange(600) % 3)
    with pytest.raises(InputError, match="two classes"):
        frame_to_xy(three, "late")
    with pytest.raises(InputError, match="multiple of the process count"):
        get_trainer("torch-mlp", batch_size=63, nproc=2).config.validate(2)
