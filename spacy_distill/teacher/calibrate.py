"""Fit a teacher's calibration on gold docs: run it, then fit a temperature (and bias).

The calibration itself (``Calibration``, ``fit_calibration``) is pure numpy and lives
in ``spacy_distill.pipeline.calibration``, beside the component that applies it.
"""

from typing import Iterable, Optional

from spacy.language import Language
from spacy.tokens import Doc

from ..pipeline.calibration import Calibration, fit_calibration
from ..progress import progress_bar
from .label import find_textcat, make_scorer


def calibrate_teacher(
    nlp: Language,
    docs: Iterable[Doc],
    *,
    component: Optional[str] = None,
    batch_size: int = 32,
    fit_bias: bool = False,
    progress: bool = False,
) -> Calibration:
    """Run the teacher on gold-labelled docs and fit its calibration.

    docs (Iterable[Doc]): Docs with gold ``doc.cats`` (e.g. the dev set).
    nlp (Language): The teacher.
    component (Optional[str]): Name of its text classifier.
    batch_size (int): Batch size for ``nlp.pipe``.
    fit_bias (bool): Also fit per-label biases (see :func:`fit_calibration`).
    progress (bool): Show progress.
    RETURNS (Calibration): The fitted calibration.
    """
    name, exclusive = find_textcat(nlp, component)
    score = make_scorer(nlp, component, batch_size)
    docs = [d for d in docs if d.cats]
    if not docs:
        raise ValueError("calibration needs docs with gold cats; none had any")
    # Gold labels the pipeline does not predict would fit a meaningless scale
    # (every gold probability is 0): refuse them, naming the first such doc.
    predicted = set(getattr(nlp.get_pipe(name), "labels", ()) or ())
    if predicted:
        for i, doc in enumerate(docs):
            if set(doc.cats) != predicted:
                raise ValueError(
                    f"gold doc {i} has the labels {sorted(doc.cats)}, but the pipeline's {name!r} predicts "
                    f"{sorted(predicted)}: calibrate on gold cats with exactly the pipeline's labels"
                )
    # Scored in slices only to show progress: the teacher takes a minute here.
    bar = progress_bar(len(docs), "calibrate", unit="doc", enabled=progress)
    scored = []
    for start in range(0, len(docs), max(batch_size, 256)):
        chunk = docs[start : start + max(batch_size, 256)]
        scored.extend(score([d.text for d in chunk]))
        bar.update(len(chunk))
    bar.close()
    return fit_calibration([s[1][1] for s in scored], [d.cats for d in docs], exclusive, fit_bias=fit_bias)
