"""A corpus reader for teacher-labelled DocBins."""

from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

from spacy.language import Language
from spacy.tokens import DocBin
from spacy.training import Example
from spacy.util import registry

from .teacher_scores import has_teacher_scores


@registry.readers("spacy-distill.TeacherLabelled.v1")
def create_teacher_labelled_reader(
    path: Optional[Union[str, Path]],
    limit: int = 0,
    langs: Optional[List[str]] = None,
    require_teacher: bool = True,
) -> Callable[[Language], Iterable[Example]]:
    """Read DocBins written by ``spacy-distill label`` (a file or a directory).

    Like ``spacy.Corpus.v1``, but it can keep only some languages (from
    ``doc.user_data["lang"]``) and checks that every doc has teacher scores,
    naming the file and doc that has none.

    path (Optional[Union[str, Path]]): A ``.spacy`` file or a directory of
        them (None only while filling a config: reading then is an error).
    limit (int): Read at most this many docs (0 = all), after the language filter.
    langs (Optional[List[str]]): Keep only docs of these languages.
    require_teacher (bool): Raise on a doc without teacher scores.
    RETURNS (Callable[[Language], Iterable[Example]]): The reader.
    """
    root = Path(path) if path is not None else None

    def read(nlp: Language) -> Iterator[Example]:
        if root is None:
            raise ValueError("TeacherLabelled: no path given (set [paths] or the reader's path)")
        if not root.exists():
            raise ValueError(f"TeacherLabelled: {root} does not exist")
        files = sorted(root.rglob("*.spacy")) if root.is_dir() else [root]
        if not files:
            raise ValueError(f"TeacherLabelled: no .spacy files under {root}")
        n = 0
        for file in files:
            for i, doc in enumerate(DocBin().from_disk(file).get_docs(nlp.vocab)):
                if langs is not None and doc.user_data.get("lang") not in langs:
                    continue
                if require_teacher and not has_teacher_scores(doc):
                    raise ValueError(f"TeacherLabelled: {file}, doc {i} has no teacher scores: {doc.text[:60]!r}")
                yield Example(nlp.make_doc(doc.text), doc)
                n += 1
                if limit and n >= limit:
                    return

    return read
