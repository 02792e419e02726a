"""The one job type end to end: outcomes, their HTTP meaning, the runner loop, the torch decision."""

from pathlib import Path

import pytest

from spacy_distill.serving.jobs import ERROR_CODES, Job, JobError, Outcome, Result, Task
from spacy_distill.serving.runner import InProcessRunner, run_to_end
from spacy_distill.serving.torch_need import torch_needed

from .serving_harness import build_test_pipeline


@pytest.fixture(scope="module")
def runner() -> InProcessRunner:
    return InProcessRunner("student", build_test_pipeline(), batch_size=4)


def test_every_error_outcome_has_one_http_meaning() -> None:
    errors = set(Outcome) - {Outcome.OK, Outcome.COUNTED, Outcome.PARTIAL}
    assert set(ERROR_CODES) == errors
    expired = JobError(Outcome.EXPIRED, "the request timed out")
    assert (expired.code.status, expired.code.retry_after) == (503, True)
    assert expired.detail("m", 30.0) == "no result within request_timeout_s=30.0"
    assert JobError(Outcome.FAILED, "boom").detail("m", 1.0) == "model 'm': boom"
    assert JobError(Outcome.OVERLOADED, "full").detail("m", 1.0) == "overloaded: full"
    assert JobError(Outcome.TOO_COSTLY, "big").code.status == 413


def test_advance_and_rest_carry_a_job_over_runs() -> None:
    job = Job("classify", ["a", "b", "c"], max_tokens=10)
    assert job.task is Task.CLASSIFY and job.budgeted
    assert not job.advance(Result(Outcome.COUNTED, counted=3, tokens=3))
    assert not job.advance(Result(Outcome.PARTIAL, ["A"], done=1))
    rest = job.rest()
    assert rest.texts == ["b", "c"] and rest.counted == 2 and rest.tokens == 3 and rest.future is None
    assert job.advance(Result(Outcome.OK, ["B", "C"]))
    assert job.results == ["A", "B", "C"]
    with pytest.raises(JobError) as err:
        Job(Task.ENCODE, ["x"]).advance(Result(Outcome.NO_VECTORS, message="none"))
    assert err.value.outcome is Outcome.NO_VECTORS and err.value.code.status == 422


def test_run_to_end_counts_and_slices_like_the_batcher(runner: InProcessRunner) -> None:
    texts = ["I love this blender " * 30, "", "Terrible, it broke"] * 20
    whole = run_to_end(runner, Job(Task.CLASSIFY, list(texts)))
    # A budget (counted over several runs) and small slices give the same answers.
    sliced = run_to_end(
        runner, Job(Task.CLASSIFY, list(texts), max_tokens=10**6, slice_tokens=50)
    )
    assert sliced == whole and len(whole) == len(texts)
    assert whole[1] == runner.info.empty_result
    with pytest.raises(JobError) as err:
        run_to_end(runner, Job(Task.CLASSIFY, ["one two three"], max_tokens_per_text=2))
    assert err.value.outcome is Outcome.TOO_COSTLY and "texts[0] has 3 tokens" in str(err.value)
    vectors = run_to_end(runner, Job(Task.ENCODE, ["hello there", ""], pooling="max"))
    assert len(vectors[0]) == runner.info.vector_width and vectors[1] == [0.0] * runner.info.vector_width


def test_torch_need_is_read_from_the_config(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    for name, needed in (("teacher.cfg", True), ("student.cfg", False)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.cfg").write_text(
            (repo / "configs" / name).read_text(encoding="utf-8"), encoding="utf-8"
        )
        assert torch_needed(str(folder)) is needed, name
    assert torch_needed(str(tmp_path / "missing")) is False
