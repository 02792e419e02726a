"""API tests for the server, against a real app and a real (tiny) spaCy pipeline."""

import time
from pathlib import Path
from typing import Iterator

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from spacy_distill.serving.app import create_app  # noqa: E402
from spacy_distill.serving.inference import (  # noqa: E402
    SOURCE_TRANSFORMER,
    _trf_token_rows,
    encode_doc,
    parse_model_spec,
)
from spacy_distill.serving.settings import ServeSettings  # noqa: E402

from .serving_harness import LABELS, STUDENT_WIDTH, save_test_pipeline  # noqa: E402

MAX_TEXTS = 8
MAX_CHARS = 200
MAX_BODY = 20_000


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> "tuple[Path, Path]":
    root = tmp_path_factory.mktemp("serving_models")
    return save_test_pipeline(root / "student"), save_test_pipeline(root / "bow", "bow")


def _settings(**kwargs: object) -> ServeSettings:
    base = dict(
        max_texts=MAX_TEXTS, max_chars=MAX_CHARS, max_body_bytes=MAX_BODY, load_in_background=False
    )
    base.update(kwargs)
    return ServeSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(model_dirs: "tuple[Path, Path]") -> Iterator[TestClient]:
    student, bow = model_dirs
    app = create_app({"student": str(student), "bow": str(bow)}, _settings())
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def auth_client(model_dirs: "tuple[Path, Path]") -> Iterator[TestClient]:
    app = create_app({"student": str(model_dirs[0])}, _settings(token="s3cret"))
    with TestClient(app) as c:
        yield c


TEXTS = ["I love this blender", "Terrible, it broke", "Fast delivery", "Awful quality"]


def test_classify_shape_and_order(client: TestClient) -> None:
    response = client.post("/classify", json={"texts": TEXTS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "student"
    assert body["elapsed_ms"] >= 0
    assert len(body["results"]) == len(TEXTS)
    for result in body["results"]:
        assert set(result["cats"]) == set(LABELS)
        assert result["label"] == max(result["cats"], key=result["cats"].get)
        assert result["score"] == pytest.approx(max(result["cats"].values()))
    # Order: each text alone gives the same result as in the batch.
    for text, expected in zip(TEXTS, body["results"]):
        alone = client.post("/classify", json={"texts": [text]}).json()["results"][0]
        assert alone["cats"] == pytest.approx(expected["cats"], abs=1e-5)


def test_classify_other_model_and_empty(client: TestClient) -> None:
    body = client.post("/classify", json={"texts": ["", "  ", "good"], "model": "bow"}).json()
    assert body["model"] == "bow"
    assert len(body["results"]) == 3
    assert client.post("/classify", json={"texts": []}).json()["results"] == []


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_encode_shape(client: TestClient, pooling: str) -> None:
    response = client.post(
        "/encode", json={"texts": ["good", "", "bad product"], "pooling": pooling}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["source"] == "tensor"
    assert body["pooling"] == pooling
    width = body["width"]
    assert width == STUDENT_WIDTH
    assert [len(v) for v in body["vectors"]] == [width] * 3
    assert body["vectors"][1] == [0.0] * width
    assert any(x != 0 for x in body["vectors"][0])


def test_encode_mean_differs_from_max(client: TestClient) -> None:
    texts = ["the battery died and support never answered"]
    mean = client.post("/encode", json={"texts": texts, "pooling": "mean"}).json()["vectors"][0]
    high = client.post("/encode", json={"texts": texts, "pooling": "max"}).json()["vectors"][0]
    assert all(m <= h + 1e-6 for m, h in zip(mean, high))
    assert mean != high


def test_encode_pools_the_students_bilstm_vectors(
    client: TestClient, model_dirs: "tuple[Path, Path]"
) -> None:
    import numpy
    import spacy

    # The served student is a distill_textcat that keeps its BiLSTM's token
    # vectors: /encode must pool exactly those (doc.tensor), not anything else.
    nlp = spacy.load(model_dirs[0])
    assert nlp.get_pipe_meta("distill_textcat").factory == "distill_textcat"
    assert nlp.get_pipe("distill_textcat").cfg["store_tensor"] is True
    texts = ["the battery died and support never answered", "とても良い商品です。"]
    docs = list(nlp.pipe(texts))
    for pooling, pool in (("mean", numpy.mean), ("max", numpy.max)):
        body = client.post("/encode", json={"texts": texts, "pooling": pooling}).json()
        for doc, vector in zip(docs, body["vectors"]):
            assert doc.tensor.shape == (len(doc), STUDENT_WIDTH)
            assert vector == pytest.approx(pool(doc.tensor, axis=0).tolist(), abs=1e-5)
    # The multilingual tokenizer of the shipped student: one token per CJK character.
    assert len(docs[1]) == len("とても良い商品です。")


def test_calibrated_student_serves_calibrated_cats_and_the_same_vectors(
    client: TestClient, model_dirs: "tuple[Path, Path]", tmp_path: Path
) -> None:
    import spacy

    from spacy_distill.pipeline.calibration import calibrate_probs

    # How a student is served calibrated (docs/experiments.md): calibrate-pipeline adds a
    # distill_calibration component after its classifier.
    scale = 2.0
    nlp = spacy.load(model_dirs[0])
    nlp.add_pipe("distill_calibration", name="calibration", config={"scale": scale, "labels": list(LABELS)})
    nlp.to_disk(tmp_path / "calibrated")
    app = create_app({"calibrated": str(tmp_path / "calibrated")}, _settings())
    raw = client.post("/classify", json={"texts": TEXTS}).json()["results"]
    raw_vectors = client.post("/encode", json={"texts": TEXTS}).json()["vectors"]
    with TestClient(app) as calibrated_client:
        status = calibrated_client.get("/status").json()["models"]["calibrated"]
        assert status["pipeline"] == ["distill_textcat", "calibration"]
        assert status["labels"] == list(LABELS)
        served = calibrated_client.post("/classify", json={"texts": TEXTS}).json()["results"]
        vectors = calibrated_client.post("/encode", json={"texts": TEXTS}).json()["vectors"]
    for before, after in zip(raw, served):
        expected = calibrate_probs([[before["cats"][k] for k in LABELS]], scale)[0].tolist()
        assert [after["cats"][k] for k in LABELS] == pytest.approx(expected, abs=1e-5)
        assert after["label"] == before["label"] and after["score"] > before["score"]
    # Calibration rescales doc.cats only: the BiLSTM's vectors are unchanged.
    assert len(vectors) == len(raw_vectors)
    for vector, raw_vector in zip(vectors, raw_vectors):
        assert vector == pytest.approx(raw_vector, abs=1e-6)


def test_encode_without_vectors_is_422(client: TestClient) -> None:
    response = client.post("/encode", json={"texts": ["x"], "model": "bow"})
    assert response.status_code == 422
    assert "exposes no vectors" in response.json()["detail"]


def test_encode_bad_pooling(client: TestClient) -> None:
    response = client.post("/encode", json={"texts": ["x"], "pooling": "median"})
    assert response.status_code == 422
    assert "pooling" in response.json()["detail"]


def test_unknown_model(client: TestClient) -> None:
    response = client.post("/classify", json={"texts": ["x"], "model": "nope"})
    assert response.status_code == 404
    assert "unknown model 'nope'" in response.json()["detail"]
    assert "student" in response.json()["detail"]


def test_limit_max_texts(client: TestClient) -> None:
    response = client.post("/classify", json={"texts": ["a"] * (MAX_TEXTS + 1)})
    assert response.status_code == 413
    assert f"max_texts={MAX_TEXTS}" in response.json()["detail"]


def test_limit_max_chars(client: TestClient) -> None:
    response = client.post("/encode", json={"texts": ["ok", "a" * (MAX_CHARS + 1)]})
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert f"max_chars={MAX_CHARS}" in detail and "texts[1]" in detail


def test_limit_body_bytes(client: TestClient) -> None:
    response = client.post(
        "/classify",
        content=b'{"texts": ["' + b"a" * MAX_BODY + b'"]}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert f"max_body_bytes={MAX_BODY}" in response.json()["detail"]


def test_limit_body_bytes_chunked(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"texts": ["'
        for _ in range(10):
            yield b"a" * 5000
        yield b'"]}'

    # A generator body is sent chunked, without Content-Length.
    response = client.post(
        "/classify", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["detail"]


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"", 422, "missing JSON body"),
        (b"[]", 422, "valid dictionary"),
        (b'{"texts": "one string"}', 422, "texts"),
        (b'{"texts": [1, 2]}', 422, "texts.0"),
        (b'{"texts": [null]}', 422, "texts.0"),
        (b'{"text": ["a"]}', 422, "Field required"),
        (b'{"texts": ["a"], "model": 5}', 422, "model"),
        (b'{"texts": ["a"], "extra": 1}', 422, "extra"),
        (b'{"texts": ["\\ud800"]}', 422, "not valid Unicode"),
        (b"\xff\xfe\x00", 400, ""),
        (b"[" * 50_00, 400, ""),
    ],
)
def test_malformed_requests(client: TestClient, body: bytes, status: int, fragment: str) -> None:
    response = client.post("/classify", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]


def test_wrong_method_and_path(client: TestClient) -> None:
    assert client.get("/classify").status_code == 405
    assert client.get("/nope").status_code == 404


def test_health_ready_status(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    client.post("/classify", json={"texts": ["warm"]})
    status = client.get("/status").json()
    assert status["ready"] is True
    assert set(status["models"]) == {"student", "bow"}
    student = status["models"]["student"]
    assert student["labels"] == list(LABELS)
    assert student["pipeline"] == ["distill_textcat"]
    assert student["version"] == "0.0.1"
    assert student["vector_source"] == "tensor"
    assert student["batching"]["batches"] >= 1
    assert status["requests"]["total"] >= 1
    latency = status["latency_ms"]["classify"]
    assert latency["count"] >= 1
    assert 0 <= latency["p50"] <= latency["p95"] <= latency["p99"]
    assert status["limits"]["max_texts"] == MAX_TEXTS


def test_metrics(client: TestClient) -> None:
    client.post("/classify", json={"texts": ["metrics please"]})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'spacy_distill_requests_total{path="/classify",status="200"}' in text
    assert 'spacy_distill_batch_texts_count{model="student"}' in text
    assert "spacy_distill_ready 1.0" in text


def test_openapi_and_docs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/classify", "/encode", "/health", "/ready", "/status", "/metrics"} <= set(
        schema["paths"]
    )
    assert client.get("/docs").status_code == 200


def test_demo_page(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert 'data-auth-required="false"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_cors_off_by_default(client: TestClient) -> None:
    response = client.post(
        "/classify", json={"texts": ["x"]}, headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in response.headers
    preflight = client.options(
        "/classify",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_when_configured(model_dirs: "tuple[Path, Path]") -> None:
    app = create_app(
        {"student": str(model_dirs[0])}, _settings(cors_origins=["https://ok.example"])
    )
    with TestClient(app) as c:
        ok = c.post("/classify", json={"texts": ["x"]}, headers={"Origin": "https://ok.example"})
        assert ok.headers["access-control-allow-origin"] == "https://ok.example"
        bad = c.post("/classify", json={"texts": ["x"]}, headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in bad.headers


@pytest.mark.parametrize(
    "path,method",
    [("/classify", "post"), ("/encode", "post"), ("/status", "get"), ("/metrics", "get")],
)
def test_token_required(auth_client: TestClient, path: str, method: str) -> None:
    kwargs = {"json": {"texts": ["x"]}} if method == "post" else {}
    call = getattr(auth_client, method)
    missing = call(path, **kwargs)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in missing.json()["detail"]
    wrong = call(path, headers={"Authorization": "Bearer nope"}, **kwargs)
    assert wrong.status_code == 401
    right = call(path, headers={"Authorization": "Bearer s3cret"}, **kwargs)
    assert right.status_code == 200


def test_token_open_endpoints(auth_client: TestClient) -> None:
    # Probes and the demo page stay open (documented): they reveal nothing but liveness.
    assert auth_client.get("/health").status_code == 200
    assert auth_client.get("/ready").status_code == 200
    page = auth_client.get("/")
    assert page.status_code == 200 and 'data-auth-required="true"' in page.text
    weird = auth_client.get("/status", headers={"Authorization": b"Bearer \xe9\xff"})
    assert weird.status_code == 401


def test_ready_503_while_loading(model_dirs: "tuple[Path, Path]") -> None:
    app = create_app({"student": str(model_dirs[0])}, _settings(load_in_background=True))
    with TestClient(app) as c:
        first = c.get("/ready")
        if first.status_code == 503:
            # Not loaded yet: the API says so instead of hanging.
            assert "loading" in first.json()["detail"]
            assert c.post("/classify", json={"texts": ["x"]}).status_code in (200, 503)
        deadline = time.monotonic() + 60
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "model never became ready"
            time.sleep(0.05)
        assert c.post("/classify", json={"texts": ["x"]}).status_code == 200


def test_failed_load_reported(tmp_path: Path) -> None:
    app = create_app({"broken": str(tmp_path / "missing")}, _settings(load_in_background=True))
    with TestClient(app) as c:
        deadline = time.monotonic() + 30
        while True:
            body = c.get("/ready").json()
            if "failed" in (body.get("detail") or "") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert c.get("/ready").status_code == 503
        assert "failed to load" in body["detail"]
        response = c.post("/classify", json={"texts": ["x"]})
        assert response.status_code == 503
        assert c.get("/health").status_code == 200


def test_parse_model_spec(model_dirs: "tuple[Path, Path]") -> None:
    assert parse_model_spec("teacher=/x/y") == ("teacher", "/x/y")
    # The default name is the pipeline's lang + name: the student is multilingual (xx).
    assert parse_model_spec(str(model_dirs[0])) == ("xx_serving_test", str(model_dirs[0]))
    assert parse_model_spec("xx_reviews_distilled") == (
        "xx_reviews_distilled",
        "xx_reviews_distilled",
    )


def test_transformer_output_pooling() -> None:
    """Pooling over spacy-transformers' TransformerData, built by hand (no model hub)."""
    numpy = pytest.importorskip("numpy")
    data_classes = pytest.importorskip("spacy_transformers.data_classes")
    import spacy
    from spacy.tokens import Doc
    from thinc.api import Ragged

    nlp = spacy.blank("en")
    doc = nlp("good bad")
    # 1 span of 4 wordpieces ([CLS] good bad [SEP]); token 0 -> piece 1, token 1 -> pieces 2 and 3.
    hidden = numpy.arange(4 * 3, dtype="f").reshape(1, 4, 3)
    wordpieces = data_classes.WordpieceBatch.zeros([4])
    align = Ragged(numpy.asarray([1, 2, 3], dtype="i"), numpy.asarray([1, 2], dtype="i"))
    trf = data_classes.TransformerData(
        wordpieces=wordpieces,
        model_output=data_classes.ModelOutput(last_hidden_state=hidden),
        align=align,
    )
    rows = _trf_token_rows(trf)
    assert rows.tolist() == [[3, 4, 5], [7.5, 8.5, 9.5]]
    if not Doc.has_extension("trf_data"):
        Doc.set_extension("trf_data", default=None)
    doc._.trf_data = trf
    assert encode_doc(doc, SOURCE_TRANSFORMER, 3, "mean") == [5.25, 6.25, 7.25]
    assert encode_doc(doc, SOURCE_TRANSFORMER, 3, "max") == [7.5, 8.5, 9.5]


def test_openapi_security_matches_auth(client: TestClient, auth_client: TestClient) -> None:
    # No token: no Bearer scheme (it would be a lie, and fuzzers test it).
    open_schema = client.get("/openapi.json").json()
    assert "securitySchemes" not in open_schema.get("components", {})
    for methods in open_schema["paths"].values():
        for operation in methods.values():
            assert "security" not in operation
    schema = auth_client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert [s["scheme"].lower() for s in schemes.values()] == ["bearer"]
    assert schema["paths"]["/classify"]["post"]["security"]
    assert "security" not in schema["paths"]["/health"]["get"]


def test_status_hides_paths_unless_authorised(
    client: TestClient, auth_client: TestClient, model_dirs: "tuple[Path, Path]"
) -> None:
    response = client.get("/status")
    assert str(model_dirs[0].parent) not in response.text
    assert response.json()["models"]["student"]["source"] == model_dirs[0].name
    full = auth_client.get("/status", headers={"Authorization": "Bearer s3cret"}).json()
    assert full["models"]["student"]["source"] == str(model_dirs[0])


def test_docs_work_offline(client: TestClient) -> None:
    from spacy_distill.serving.routes_docs import docs_assets

    docs, redoc = client.get("/docs"), client.get("/redoc")
    assert docs.status_code == 200 and redoc.status_code == 200
    for page in (docs.text, redoc.text):
        # Nothing loaded from elsewhere (the FastAPI defaults use a CDN and Google Fonts).
        assert "https://" not in page and "http://" not in page
    if docs_assets() is None:
        assert "fastapi-offline" in docs.text and "/classify" in docs.text
        return
    assert "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "/docs-assets/redoc.standalone.js" in redoc.text
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        asset = client.get(f"/docs-assets/{name}")
        assert asset.status_code == 200 and len(asset.content) > 10_000


def test_settings_from_dict_refuses_unknown_keys() -> None:
    settings = ServeSettings(max_texts=7, token="t")
    assert ServeSettings.from_dict(settings.to_dict()) == settings
    # A misspelt key is an error that names it, not a default silently kept.
    with pytest.raises(ValueError, match=r"'max_text' \(did you mean 'max_texts'\?\)"):
        ServeSettings.from_dict({"max_text": 10})
    with pytest.raises(ValueError, match="unknown server settings: 'colour'"):
        ServeSettings.from_dict({"max_texts": 10, "colour": "red"})


def test_version_is_the_installed_package_s(client: TestClient) -> None:
    from importlib.metadata import version

    assert client.get("/openapi.json").json()["info"]["version"] == version("spacy-distill")
