"""Static word vectors for the student, distilled from the teacher's encoder.

Thin wrapper over ``spacy_distill.teacher.static_vectors.distill_vectors``: the
vocabulary comes from unlabelled texts (JSONL/CSV/... with a ``lang`` field),
tokenized by the student's tokenizer (the ``[nlp]`` block of the student config);
the output is a blank pipeline folder with the vectors, for ``[initialize] vectors``.
"""

from pathlib import Path
from typing import Iterator, List, Tuple

import spacy
import typer
from spacy.cli._util import parse_config_overrides
from spacy.util import load_config

from spacy_distill.io import read_records, write_json
from spacy_distill.project import load_section, run
from spacy_distill.teacher.static_vectors import distill_vectors


def texts(paths: List[Path]) -> Iterator[Tuple[str, str]]:
    """(lang, text) of every record of the inputs; a record without a language is an error."""
    for path in paths:
        for record in read_records(path):
            if not record.lang:
                raise typer.BadParameter(f"{record.path}:{record.line}: no 'lang' field")
            yield record.lang, record.text


def main(
    ctx: typer.Context,
    teacher: Path = typer.Argument(..., exists=True, file_okay=False, help="Teacher pipeline"),
    output: Path = typer.Argument(..., file_okay=False, help="Output pipeline folder with the vectors"),
    inputs: List[Path] = typer.Option(..., "--texts", exists=True, help="Unlabelled texts with a lang field (repeatable)"),
    student_config: Path = typer.Option(Path("configs/student.cfg"), "--student-config", exists=True, help="Student config (its [nlp] tokenizer)"),
    config: Path = typer.Option(Path("configs/vectors.cfg"), "--config", exists=True, help="Config with a [vectors] section"),
    summary: Path = typer.Option(None, "--summary", dir_okay=False, help="Write a JSON summary here"),
) -> None:
    """Distil static vectors from the teacher for the student's vocabulary.

    ctx (typer.Context): Holds dotted overrides, e.g. --vectors.dims 32.
    teacher (Path): The teacher pipeline.
    output (Path): The vectors pipeline folder.
    inputs (List[Path]): Texts for the vocabulary.
    student_config (Path): The student config.
    config (Path): The vectors config.
    summary (Path): Optional summary JSON.
    """
    settings = load_section(config, "vectors", parse_config_overrides(ctx.args))
    nlp_cfg = load_config(student_config)["nlp"]
    tokenizer_nlp = spacy.blank(nlp_cfg["lang"], config={"nlp": {"tokenizer": dict(nlp_cfg["tokenizer"])}})
    result = distill_vectors(
        spacy.load(teacher),
        tokenizer_nlp,
        texts(inputs),
        output,
        n_per_lang=int(settings["n_per_lang"]),
        min_count=int(settings["min_count"]),
        dims=int(settings["dims"]),
        batch_size=int(settings["batch_size"]),
    )
    if summary is not None:
        write_json(summary, result)
    typer.echo(f"vectors: {result['rows']} rows x {result['dims']} dims, {result['keys']} keys -> {output}")


if __name__ == "__main__":
    run(main)
