"""Pipelines: unchanged steps are skipped, a failed run resumes from the failed step in another
process, and every run records its lineage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelmill.config import Settings
from modelmill.errors import ConflictError, InputError, NotFoundError
from modelmill.project import Project
from modelmill.training import Pipeline, Runs, get_pipeline, pipeline_runs_of, register_pipeline, step
from tests.training import sample_pipelines

ROOT = Path(__file__).resolve().parents[2]


def _pipeline(calls: list[str]) -> Pipeline:
    @step(inputs=["n"], outputs=["xs"])
    def make(n: int) -> list[int]:
        calls.append("make")
        return list(range(n))

    @step(inputs=["xs", "scale"], outputs=["total", "count"])
    def summarize(xs: list[int], scale: int) -> dict[str, int]:
        calls.append("summarize")
        return {"total": sum(xs) * scale, "count": len(xs)}

    @step(inputs=["total"], outputs=["text"])
    def render(total: int) -> str:
        calls.append("render")
        return f"total={total}"

    return Pipeline("cached", [make, summarize, render])


def test_a_step_whose_inputs_did_not_change_is_skipped(project: Project) -> None:
    calls: list[str] = []
    pipe = _pipeline(calls)
    first = pipe.run(project, params={"n": 4, "scale": 2})
    assert first.status == "finished" and [s.status for s in first.steps] == ["ran", "ran", "ran"]
    assert first.value("text") == "total=12" and calls == ["make", "summarize", "render"]

    calls.clear()
    again = pipe.run(project, params={"n": 4, "scale": 2})
    assert [s.status for s in again.steps] == ["cached", "cached", "cached"] and calls == []
    assert again.value("text") == "total=12"  # read back from the artifact store

    calls.clear()
    changed = pipe.run(project, params={"n": 4, "scale": 3})
    assert [s.status for s in changed.steps] == ["cached", "ran", "ran"]
    assert calls == ["summarize", "render"] and changed.value("text") == "total=18"

    # Same output bytes from a re-run step: the steps downstream of it stay cached.
    calls.clear()
    other_n = pipe.run(project, params={"n": 3, "scale": 6})  # sum(0..2) * 6 == 18 again
    assert [s.status for s in other_n.steps] == ["ran", "ran", "cached"]
    assert calls == ["make", "summarize"] and other_n.value("text") == "total=18"


def test_changing_a_steps_code_reruns_it(project: Project) -> None:
    calls: list[str] = []
    pipe = _pipeline(calls)
    pipe.run(project, params={"n": 3, "scale": 1})

    @step(inputs=["total"], outputs=["text"], name="render")
    def render_v2(total: int) -> str:
        return f"TOTAL {total}"

    edited = Pipeline("cached", [*pipe.steps[:2], render_v2])
    result = edited.run(project, params={"n": 3, "scale": 1})
    assert [s.status for s in result.steps] == ["cached", "cached", "ran"]
    assert result.value("text") == "TOTAL 3"


def test_a_deleted_output_makes_its_step_run_again(project: Project) -> None:
    calls: list[str] = []
    pipe = _pipeline(calls)
    first = pipe.run(project, params={"n": 3, "scale": 1})
    key = first.steps[0].cache_key
    assert key is not None
    project.artifacts.delete(f"pipelines/cached/{key}/xs.pkl")
    calls.clear()
    again = pipe.run(project, params={"n": 3, "scale": 1})
    assert [s.status for s in again.steps] == ["ran", "cached", "cached"] and calls == ["make"]


def _cli(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MODELMILL_")}
    full |= {"MODELMILL_HOME": str(home), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "modelmill", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=180)


def test_a_failed_run_resumes_from_the_failed_step_in_another_process(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    home, counter, flag = tmp_path / "home", tmp_path / "calls.txt", tmp_path / "fail"
    flag.touch()
    out = _cli(["pipeline", "run", "tests.training.sample_pipelines:flaky", "-p", "n=400", "-p", "seed=1",
                "--json"], home, MM_TEST_COUNTER=str(counter), MM_TEST_FAIL=str(flag))
    assert out.returncode == 1, out.stderr
    failed = json.loads(out.stdout)
    assert failed["status"] == "failed" and failed["failed_step"] == "train"
    assert [s["status"] for s in failed["steps"]] == ["ran", "failed", "pending"]
    assert "planted failure" in failed["error"]
    assert counter.read_text().split() == ["load", "train"]

    flag.unlink()
    monkeypatch.setenv("MM_TEST_COUNTER", str(counter))
    with Project(Settings.defaults(home=home)) as project:
        result = sample_pipelines.flaky.run(project, resume="last")
        assert result.id == failed["id"] and result.attempts == 2 and result.status == "finished"
        assert [s.status for s in result.steps] == ["resumed", "ran", "ran"]
        # load ran once, in the first process; train ran again (it failed), then report.
        assert counter.read_text().split() == ["load", "train", "train", "report"]
        assert result.value("report").startswith("auc=")
        with pytest.raises(NotFoundError):
            sample_pipelines.flaky.run(project, resume="last")  # nothing failed is left
        with pytest.raises(ConflictError):
            sample_pipelines.flaky.run(project, resume=result.id)  # a finished run does not resume

        # Lineage: data snapshot, training set and the tracking run that trained the model.
        lineage = pipeline_runs_of(project, "flaky")[0]["lineage"]
        assert lineage["data_snapshot"] == "synthetic:n=400:seed=1" and lineage["training_set"] == "ts-400-1"
        run = Runs(project).get(lineage["run_id"])
        assert run.status == "finished" and run.data_snapshot == "synthetic:n=400:seed=1"
        assert run.feature_version == "fv1" and run.metrics["valid_auc"]["last"] > 0.9


def test_lineage_reaches_the_model_version(project: Project) -> None:
    from modelmill.registry import Registry, Signature

    @step(inputs=["model", "metrics"], outputs=["version"])
    def publish(model: object, metrics: dict[str, float], ctx: object) -> str:
        from modelmill.training import StepContext

        assert isinstance(ctx, StepContext)
        mv = Registry(ctx.project).register(
            "late", model, flavor="sklearn", signature=Signature.from_dict({
                "inputs": [{"name": f"f{i}", "dtype": "float64"} for i in range(3)],
                "outputs": [{"name": "probability", "dtype": "float64"}]}),
            run_id=ctx.lineage.get("run_id"), metrics=metrics)
        ref = f"{mv.name}@{mv.version}"
        ctx.record(model_version=ref)
        return ref

    pipe = Pipeline("with-registry", [*sample_pipelines.flaky.steps[:2], publish])
    result = pipe.run(project, params={"n": 300, "seed": 2})
    assert result.status == "finished", result.error
    assert result.lineage["model_version"] == "late@1"
    assert result.lineage["training_set"] == "ts-300-2" and result.run_id == result.lineage["run_id"]
    again = pipe.run(project, params={"n": 300, "seed": 2})  # nothing changed: nothing re-registered
    assert [s.status for s in again.steps] == ["cached", "cached", "cached"]
    assert again.lineage["model_version"] == "late@1"


def test_pipelines_are_found_by_module_path_and_by_registered_name(project: Project) -> None:
    assert get_pipeline("tests.training.sample_pipelines:flaky") is sample_pipelines.flaky
    register_pipeline(sample_pipelines.marker)
    assert get_pipeline("marker") is sample_pipelines.marker
    with pytest.raises(NotFoundError, match="module:attr"):
        get_pipeline("no-such-pipeline", project)
    with pytest.raises(NotFoundError):
        get_pipeline("tests.training.sample_pipelines:nothing")


def test_missing_params_and_bad_steps_are_named(project: Project) -> None:
    with pytest.raises(InputError, match="n"):
        sample_pipelines.flaky.run(project, params={"seed": 1})

    @step(inputs=["a"], outputs=["b"])
    def one(a: int) -> int:
        return a

    with pytest.raises(InputError, match="two steps"):
        Pipeline("dup", [one, one])
    with pytest.raises(InputError, match="does not accept"):
        step(inputs=["zzz"], outputs=["b"])(lambda a: a)

    @step(inputs=["a"], outputs=["b", "c"])
    def wrong_arity(a: int) -> int:
        return a

    result = Pipeline("arity", [wrong_arity]).run(project, params={"a": 1})
    assert result.status == "failed" and "2 values" in (result.error or "")
