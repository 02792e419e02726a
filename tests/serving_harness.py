"""Test harness for the server: tiny real pipelines and a live uvicorn.

Not part of the plugin: used by the test suite and ``benchmarks/bench_ray.py``,
and handy for trying the server without a trained model. Nothing here is
mocked: the student is a real (if tiny) ``distill_textcat`` pipeline of the
shipped student's shape (``configs/student.cfg``: multilingual ``xx`` with the
CJK-aware tokenizer, a BiLSTM plus word and character n-gram models, token
vectors kept as ``doc.tensor``), trained for a few steps on teacher scores;
the baseline is a stock spaCy bag-of-words ``textcat``, as ``configs/bow.cfg``.
"""

import math
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import spacy
from spacy.language import Language
from spacy.training import Example

from spacy_distill.pipeline.teacher_scores import set_teacher_scores

from .util import STUDENT_CHARS_CONFIG, blank_xx

TRAIN_DATA: List[Tuple[str, str]] = [
    ("I love this blender, it works great", "POSITIVE"),
    ("Fantastic quality and fast delivery", "POSITIVE"),
    ("Really happy with this purchase", "POSITIVE"),
    ("The shoes are comfortable and look nice", "POSITIVE"),
    ("Excellent value, would buy again", "POSITIVE"),
    ("Terrible, it broke after one day", "NEGATIVE"),
    ("Awful quality, do not buy", "NEGATIVE"),
    ("The battery died and support never answered", "NEGATIVE"),
    ("Waste of money, very disappointed", "NEGATIVE"),
    ("It arrived broken and smells bad", "NEGATIVE"),
]
LABELS = ("POSITIVE", "NEGATIVE")
# The student's doc.tensor width: the BiLSTM keeps its embedding width (the two
# directions split it), so /encode answers vectors of this length.
STUDENT_WIDTH = int(STUDENT_CHARS_CONFIG["model"]["embed"]["width"])
# What the stand-in teacher gives the label of each sentence: soft, as a real
# teacher's probabilities are, so the student trains on the distillation path.
TEACHER_P = 0.9
KINDS = ("student", "bow")


def _teacher_examples(nlp: Language) -> List[Example]:
    examples = []
    for text, label in TRAIN_DATA:
        reference = nlp.make_doc(text)
        probs: Dict[str, float] = {
            lab: TEACHER_P if lab == label else (1.0 - TEACHER_P) / (len(LABELS) - 1)
            for lab in LABELS
        }
        set_teacher_scores(reference, probs, {lab: math.log(p) for lab, p in probs.items()})
        examples.append(Example(nlp.make_doc(text), reference))
    return examples


def _gold_examples(nlp: Language) -> List[Example]:
    return [
        Example.from_dict(
            nlp.make_doc(text), {"cats": {lab: float(lab == label) for lab in LABELS}}
        )
        for text, label in TRAIN_DATA
    ]


def build_test_pipeline(
    kind: str = "student",
    n_iter: int = 15,
    seed: int = 0,
    *,
    with_tok2vec: Optional[bool] = None,
) -> Language:
    """A tiny text classifier, trained for a few steps.

    kind (str): "student": a ``distill_textcat`` pipeline like the shipped
        student (BiLSTMTextCat.v2 with word and char n-grams, ``store_tensor``
        on, so docs get the BiLSTM's token vectors as ``doc.tensor`` for
        ``/encode``), trained on teacher scores; "bow": an English stock
        bag-of-words ``textcat`` trained on gold cats, which exposes no vectors.
    n_iter (int): Training passes over the 10 sentences.
    seed (int): Random seed.
    with_tok2vec (Optional[bool]): The older spelling, kept for its callers:
        True is "student", False is "bow".
    RETURNS (Language): The trained pipeline.
    """
    if with_tok2vec is not None:
        kind = "student" if with_tok2vec else "bow"
    if kind not in KINDS:
        raise ValueError(f"unknown test pipeline kind {kind!r}: expected one of {KINDS}")
    spacy.util.fix_random_seed(seed)
    if kind == "student":
        nlp = blank_xx()
        textcat = nlp.add_pipe("distill_textcat", config=STUDENT_CHARS_CONFIG)
    else:
        nlp = spacy.blank("en")
        textcat_model = {
            "@architectures": "spacy.TextCatBOW.v3",
            "exclusive_classes": True,
            "ngram_size": 1,
            "no_output_layer": False,
            "length": 4096,
        }
        textcat = nlp.add_pipe("textcat", config={"model": textcat_model})
    # Added in LABELS order, which is the order /status reports.
    for label in LABELS:
        textcat.add_label(label)
    examples = _teacher_examples(nlp) if kind == "student" else _gold_examples(nlp)
    optimizer = nlp.initialize(lambda: examples)
    rng = random.Random(seed)
    for _ in range(n_iter):
        rng.shuffle(examples)
        nlp.update(examples, sgd=optimizer, drop=0.0)
    nlp.meta["name"] = "serving_test" if kind == "student" else "serving_test_bow"
    nlp.meta["version"] = "0.0.1"
    nlp.meta["description"] = "Tiny test pipeline for spacy-distill serving"
    return nlp


def save_test_pipeline(
    path: Union[str, Path], kind: str = "student", *, with_tok2vec: Optional[bool] = None
) -> Path:
    """Build the test pipeline and save it to a directory.

    path (Union[str, Path]): Output directory.
    kind (str): See ``build_test_pipeline``.
    with_tok2vec (Optional[bool]): See ``build_test_pipeline``.
    RETURNS (Path): The directory.
    """
    path = Path(path)
    build_test_pipeline(kind, with_tok2vec=with_tok2vec).to_disk(path)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``.

    host (str): Interface.
    RETURNS (int): The port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """Run an ASGI app on a real uvicorn in a background thread, on loopback.

    The server gets the connection limits that ``spacy-distill serve`` uses
    (``connections.uvicorn_config``), from ``settings`` or the app's own.

    app (Any): The ASGI app.
    wait_ready (bool): Also wait until ``/ready`` answers 200.
    timeout (float): Longest to wait for startup (and readiness).
    settings (Optional[ServeSettings]): Connection limits; default: those
        of an app made by ``create_app``, else the defaults.
    """

    def __init__(
        self,
        app: Any,
        wait_ready: bool = True,
        timeout: float = 60.0,
        settings: Optional[Any] = None,
    ) -> None:
        import uvicorn

        from spacy_distill.serving.connections import uvicorn_config
        from spacy_distill.serving.settings import ServeSettings

        self.app = app
        self.wait_ready = wait_ready
        self.timeout = timeout
        # Bind here and hand uvicorn the socket, so no other process can grab the port in between.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        if settings is None:
            serving = getattr(getattr(app, "state", None), "serving", None)
            settings = getattr(serving, "settings", None) or ServeSettings()
        config = uvicorn_config(
            app, settings, log_level="warning", lifespan="on", timeout_graceful_shutdown=30
        )
        self.server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "LiveServer":
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("uvicorn exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("uvicorn did not start in time")
            time.sleep(0.02)
        if self.wait_ready:
            wait_until_ready(self.url, timeout=max(1.0, deadline - time.monotonic()))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.timeout)
        self._sock.close()


def wait_until_ready(url: str, timeout: float = 60.0, headers: Optional[dict] = None) -> None:
    """Poll ``/ready`` until it answers 200.

    url (str): Server base URL.
    timeout (float): Longest to wait, in seconds.
    headers (Optional[dict]): Extra request headers.
    """
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/ready", timeout=2.0, headers=headers)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as err:
            last = repr(err)
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}")
