"""The offline ``classify`` command and ``serve`` argument handling."""

import json
from pathlib import Path

import pytest
import spacy
import typer
from typer.testing import CliRunner

from spacy_distill.serving import cli as serving_cli

from .serving_harness import LABELS, save_test_pipeline

TEXTS = ["I love this blender", "Terrible, it broke", "", 'Fast delivery, "quoted", comma']


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    serving_cli.register(app)
    return app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_test_pipeline(tmp_path_factory.mktemp("cli_model") / "student")


def _run(app: typer.Typer, *args: str):  # noqa: ANN202 - click Result
    return CliRunner().invoke(app, [str(a) for a in args])


def _write(path: Path, fmt: str) -> Path:
    if fmt == "txt":
        # Blank lines are skipped in .txt, so the empty text is not in it.
        path.write_text("\n".join(t for t in TEXTS if t) + "\n", encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text(
            "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS)) + "\n",
            encoding="utf-8",
        )
    else:
        import csv

        with path.open("w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["marc_idx", "text", "stars"])
            for i, text in enumerate(TEXTS):
                writer.writerow([i, text, 5])
            writer.writerow([99, "multi\nline review", 1])
    return path


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv"])
def test_classify_file(app: typer.Typer, model_dir: Path, tmp_path: Path, fmt: str) -> None:
    source = _write(tmp_path / f"in.{fmt}", fmt)
    output = tmp_path / "out" / "scores.jsonl"
    result = _run(app, "classify", model_dir, source, "-o", output, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    expected = [t for t in TEXTS if t] if fmt == "txt" else list(TEXTS)
    if fmt == "csv":
        expected.append("multi\nline review")
    assert [r["text"] for r in rows] == expected
    nlp = spacy.load(model_dir)
    for row in rows:
        assert set(row["cats"]) == set(LABELS)
        if row["text"]:
            assert row["cats"] == pytest.approx(nlp(row["text"]).cats, abs=1e-5)
    if fmt == "jsonl":
        assert [r["id"] for r in rows] == list(range(len(TEXTS)))
    if fmt == "csv":
        assert rows[-1]["line"] == 6  # the multi-line record starts on line 6
    assert not list(output.parent.glob(".*.tmp"))


@pytest.mark.parametrize(
    "name,content,where,message",
    [
        ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', "bad.jsonl:2", "invalid JSON"),
        ("bad2.jsonl", b'{"text": "ok"}\n\n["a"]\n', "bad2.jsonl:3", "expected a JSON object"),
        ("bad3.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', "bad3.jsonl:2", "missing field 'text'"),
        ("bad4.jsonl", b'{"text": 5}\n', "bad4.jsonl:1", "must be a string"),
        ("bad.csv", b"id,body\n1,x\n", "bad.csv:1", "no 'text' column"),
        ("bad2.csv", b"id,text\n1,x\n2,y,extra\n", "bad2.csv:3", "expected 2 fields"),
        ("bad.txt", b"fine\nbroken \xff byte\n", "bad.txt:2", "not valid UTF-8"),
        # Issue #19: an unclosed quote is an error at the line it opens, not a merged record.
        ("quote.csv", b'text\nfirst review\n"second, unclosed\nthird review\nfourth\n', "quote.csv:3", "never closed"),
        # Bad UTF-8 is reported at its physical line, past the csv module's read-ahead
        # and in the header too.
        ("late.csv", b"text\n" + b"a review\n" * 3000 + b"\xff\n", "late.csv:3002", "not valid UTF-8"),
        ("multi.csv", b'text\n"two\nlines"\n\xffx\n', "multi.csv:4", "not valid UTF-8"),
        ("head.csv", b"te\xfft\nok\n", "head.csv:1", "not valid UTF-8"),
        ("bad.xml", b"<x/>", "bad.xml", "unknown input format"),
    ],
)
def test_classify_bad_input(
    app: typer.Typer,
    model_dir: Path,
    tmp_path: Path,
    name: str,
    content: bytes,
    where: str,
    message: str,
) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    output = tmp_path / "out.jsonl"
    result = _run(app, "classify", model_dir, source, "-o", output)
    assert result.exit_code == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result.stderr
    assert where in error_lines[0] and message in error_lines[0]
    assert not output.exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_classify_missing_file_and_model(app: typer.Typer, model_dir: Path, tmp_path: Path) -> None:
    result = _run(app, "classify", model_dir, tmp_path / "nope.txt", "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and "no such file" in result.stderr
    source = tmp_path / "in.txt"
    source.write_text("hello\n", encoding="utf-8")
    result = _run(app, "classify", tmp_path / "no_model", source, "-o", tmp_path / "o.jsonl")
    assert result.exit_code == 1 and "cannot load model" in result.stderr


def test_serve_rejects_bad_models(app: typer.Typer, model_dir: Path, tmp_path: Path) -> None:
    result = _run(app, "serve", tmp_path / "missing")
    assert result.exit_code == 1 and "neither a path nor an installed package" in result.stderr
    result = _run(app, "serve", f"a={model_dir}", f"a={model_dir}")
    assert result.exit_code == 1 and "two models are called 'a'" in result.stderr
    result = _run(app, "serve", model_dir, "--max-texts", "0")
    assert result.exit_code != 0


def _one_error_line(result) -> str:  # noqa: ANN001 - click Result
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_lone_surrogate_in_jsonl_is_one_line(app: typer.Typer, model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"text": "ok"}\n{"text": "bad \\ud800 text"}\n', encoding="utf-8")
    output = tmp_path / "out.jsonl"
    result = _run(app, "classify", model_dir, source, "-o", output, "--no-progress")
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "in.jsonl:2" in line and "not valid Unicode" in line
    assert not output.exists() and not list(tmp_path.glob(".*.tmp"))
    # The client reads the same way: the error comes before any request.
    result = _run(app, "client", "classify", "--url", "http://127.0.0.1:9", source)
    assert result.exit_code == 1
    assert "in.jsonl:2" in _one_error_line(result)


def test_classify_refuses_bad_outputs(app: typer.Typer, model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("great\nawful\n", encoding="utf-8")
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me", encoding="utf-8")
    cases = {
        "": "empty",
        str(tmp_path): "is a directory",
        str(source): "is the input",
        str(a_file / "out.jsonl"): "is not a directory",
        "/proc/no-such-dir/out.jsonl": "cannot create",
        str(a_file): "exists; add --overwrite",
    }
    for output, message in cases.items():
        result = _run(app, "classify", model_dir, source, "-o", output, "--no-progress")
        assert result.exit_code == 1, (output, result.output)
        assert message in _one_error_line(result), output
    assert source.read_text(encoding="utf-8") == "great\nawful\n"
    assert a_file.read_text(encoding="utf-8") == "keep me"
    # A missing parent is created; --overwrite replaces an existing output.
    nested = tmp_path / "new" / "dir" / "out.jsonl"
    assert _run(app, "classify", model_dir, source, "-o", nested, "--no-progress").exit_code == 0
    result = _run(app, "classify", model_dir, source, "-o", a_file, "--no-progress", "--overwrite")
    assert result.exit_code == 0 and len(a_file.read_text(encoding="utf-8").splitlines()) == 2


def test_serve_refuses_a_folder_that_is_not_a_pipeline(app: typer.Typer, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    result = _run(app, "serve", tmp_path)
    assert result.exit_code == 1
    assert "not a spaCy pipeline" in _one_error_line(result)


@pytest.mark.parametrize(
    "args,option",
    [
        (["serve", "MODEL", "--port", "99999"], "--port"),
        (["serve", "MODEL", "--port", "0"], "--port"),
        (["serve", "MODEL", "--log-level", "nosuch"], "--log-level"),
        (["serve", "MODEL", "--request-timeout", "0"], "--request-timeout"),
        (["client", "classify", "IN", "--timeout", "0"], "--timeout"),
        (["client", "classify", "IN", "--retries", "-1"], "--retries"),
    ],
)
def test_argument_ranges(
    app: typer.Typer, model_dir: Path, tmp_path: Path, args: "list[str]", option: str
) -> None:
    source = tmp_path / "in.txt"
    source.write_text("x\n", encoding="utf-8")
    args = [str(model_dir) if a == "MODEL" else str(source) if a == "IN" else a for a in args]
    result = _run(app, *args)
    # A usage error naming the option: the server never starts on another port.
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


def test_client_bad_url_is_one_line(app: typer.Typer, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_text("x\n", encoding="utf-8")
    result = _run(app, "client", "classify", "--url", "localhost:8000", source)
    assert result.exit_code == 1
    assert "http://" in _one_error_line(result)


# serve's options that are not server settings: the models, logging, Ray, the cascade.
NOT_SETTINGS = {
    "models", "log_level", "access_log", "ray", "address", "replicas", "debug",
    "cascade", "threshold", "defer_share", "cascade_report", "temperature", "calibration",
}


def test_serve_defaults_are_the_settings_defaults(app: typer.Typer) -> None:
    """Every serve option that configures the server is a ServeSettings field with
    the field's default, so the defaults have one source."""
    serve = typer.main.get_command(app).commands["serve"]
    options = {p.name: p.default for p in serve.params if p.name not in NOT_SETTINGS}
    settings = serving_cli.settings_from_options(options)
    defaults = serving_cli.ServeSettings(load_in_background=False)
    assert settings == defaults
    fields = {serving_cli.OPTION_FIELDS.get(name, name) for name in options}
    # Every field but the ones no option sets (the cascade is built from its own options).
    assert fields == set(defaults.to_dict()) - {"load_in_background", "cascade"}


def test_settings_from_options_names_an_unknown_option() -> None:
    with pytest.raises(ValueError, match="'max_text' \\(did you mean 'max_texts'\\?\\)"):
        serving_cli.settings_from_options({"max_text": 3, "inference": "thread", "cors_origin": None})


def test_documented_serve_defaults_are_the_settings_defaults() -> None:
    """docs/serving.md's option table states each setting's default as ServeSettings has it."""
    import re

    defaults = serving_cli.ServeSettings().to_dict()
    table = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `--([a-z-]+)` \| `([^`]+)` \|", table, flags=re.MULTILINE)
    checked = set()
    for option, documented in rows:
        name = option.replace("-", "_")
        field = serving_cli.OPTION_FIELDS.get(name, name)
        if field in defaults:
            value = defaults[field]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert float(documented) == float(value), option
            else:
                assert documented == str(value), option
            checked.add(field)
    assert len(checked) >= 20, checked
