"""ExploreSession, its JSON server and the static export on a small hand-made ImageTextModel (no training): the
answers equal the model's own zero-shot / retrieve calls, bad input gets a 400 naming the field, nothing is
loaded from outside the server."""

from __future__ import annotations

import http.client
import json
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cxr_vlp.eval.embed import SplitEmbeddings
from cxr_vlp.explore.export import export_static
from cxr_vlp.explore.negation import negated
from cxr_vlp.explore.server import STATIC_FILES, make_server, static_text
from cxr_vlp.explore.session import ExploreSession, QueryError, decile, decode_upload
from cxr_vlp.inference.base import ImageEncoding, ImageTextModel
from cxr_vlp.models.outputs import Embeddings
from cxr_vlp.text.labels import CHEXPERT_LABELS

D = 16


class HashModel(ImageTextModel):
    """Images: 8×8 thumbnails through a fixed projection; texts: character-bigram counts through another."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w_img = torch.randn(64, D, generator=g)
        self.w_txt = torch.randn(256, D, generator=g)

    name = "hash"
    fingerprint = "hash-0"
    zero_shot_scale = 7.0

    @property
    def image_transform(self):
        return lambda image: {
            "image": torch.from_numpy(cv2.resize(image, (8, 8), interpolation=cv2.INTER_AREA)).float()[None] / 255.0
        }

    def encode_pixels(self, pixels):
        emb = F.normalize(pixels.flatten(1) @ self.w_img, dim=-1)
        return ImageEncoding(Embeddings(emb), emb)

    def encode_text_embeddings(self, texts):
        counts = torch.zeros(len(texts), 256)
        for i, t in enumerate(texts):
            for a, b in zip(t, t[1:]):
                counts[i, (ord(a) * 31 + ord(b)) % 256] += 1
        return Embeddings(F.normalize(counts @ self.w_txt, dim=-1))

    def similarity_scores(self, query, gallery):
        return 10.0 * query.mean @ gallery.mean.T

    @property
    def thresholds(self):
        return pd.Series({"Cardiomegaly": 0.42, "Edema": 0.61})


REPORTS = [
    "there is a small left pleural effusion",
    "the heart is enlarged",
    "no acute cardiopulmonary process",
    "right lower lobe consolidation",
    "mild pulmonary edema",
    "no pneumothorax",
    "there is cardiomegaly",
]


@pytest.fixture(scope="module")
def model() -> HashModel:
    return HashModel()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, size=(40 + 3 * i, 50 - 2 * i), dtype=np.uint8) for i in range(len(REPORTS))]


@pytest.fixture(scope="module")
def session(model: HashModel, images: list[np.ndarray]) -> ExploreSession:
    labels = torch.full((len(REPORTS), 14), float("nan"))
    labels[1, CHEXPERT_LABELS.index("Cardiomegaly")] = 1.0
    labels[2, 0] = 1.0
    emb = SplitEmbeddings(
        split="test",
        image=model.encode_images(images),
        text=model.encode_texts(REPORTS),
        features=torch.zeros(len(REPORTS), 1),
        labels=labels,
        study_ids=[f"s{i}" for i in range(len(REPORTS))],
        texts=list(REPORTS),
    )
    return ExploreSession(model, emb, images=lambda i: images[i], k=3)


def test_decile_is_the_ceiling_of_ten_times_the_distribution_function() -> None:
    ref = np.arange(1, 101, dtype=float)
    assert [decile(v, ref) for v in (0.0, 1.0, 10.0, 10.5, 11.0, 55.0, 99.9, 100.0, 1e9)] == [
        1,
        1,
        1,
        1,
        2,
        6,
        10,
        10,
        10,
    ]
    rng = np.random.default_rng(0)
    ref = rng.exponential(size=37)
    for v in rng.exponential(size=20):
        direct = sum(1 for r in ref if r <= v) / len(ref)
        assert decile(v, ref) == min(10, max(1, math.ceil(10 * direct)))
    with pytest.raises(ValueError, match="empty"):
        decile(1.0, np.array([]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pleural effusion", "no pleural effusion"),
        ("no pleural effusion", "pleural effusion"),
        ("There is a small pneumothorax", "no small pneumothorax"),
        ("there is no edema", "edema"),
        ("No evidence of pneumonia", "pneumonia"),
        ("Cardiomegaly", "no cardiomegaly"),
        ("CHF", "no CHF"),
        ("an enlarged heart", "no enlarged heart"),
        ("without consolidation", "consolidation"),
        ("  nodule  ", "no nodule"),
        ("normal chest", "no normal chest"),
    ],
)
def test_negated_variant(text: str, expected: str) -> None:
    assert negated(text) == expected
    with pytest.raises(ValueError):
        negated("  ")


def test_image_query_equals_the_models_zero_shot_and_retrieval(
    session: ExploreSession, model: HashModel, images: list[np.ndarray]
) -> None:
    answer = session.image_query(index=1)
    expected = model.zero_shot([images[1]])
    assert [z["label"] for z in answer["zero_shot"]] == list(CHEXPERT_LABELS)
    for z in answer["zero_shot"]:
        assert z["prob"] == pytest.approx(float(expected[z["label"]].iloc[0]), abs=1e-6)
        assert z["threshold"] == expected.attrs["thresholds"].get(z["label"])
        assert z["positive"] == (None if z["threshold"] is None else z["prob"] >= z["threshold"])
    ref = model.retrieve([images[1]], model.gallery(REPORTS), k=3)
    assert [r["text"] for r in answer["retrieved"]] == list(ref["item"])
    np.testing.assert_allclose([r["score"] for r in answer["retrieved"]], ref["score"], atol=1e-5)
    assert [r["true"] for r in answer["retrieved"]] == [r["index"] == 1 for r in answer["retrieved"]]
    scores = model.similarity(images[1:2], REPORTS)[0]
    assert answer["true_rank"] == float((scores > scores[1]).sum()) + 1.0
    assert answer["truth"]["labels"][CHEXPERT_LABELS.index("Cardiomegaly")]["state"] == "positive"
    assert answer["truth"]["labels"][1]["state"] == "unknown" and answer["truth"]["report"] == REPORTS[1]
    assert "uncertainty" not in answer and "concepts" not in answer


def test_text_query_equals_retrieve_over_the_split_images(
    session: ExploreSession, model: HashModel, images: list[np.ndarray]
) -> None:
    answer = session.text_query("  pleural effusion ", k=4)
    ref = model.retrieve(["pleural effusion"], model.gallery(images, ids=[f"s{i}" for i in range(len(images))]), k=4)
    assert answer["text"] == "pleural effusion" and answer["negated"] == "no pleural effusion"
    assert [r["study_id"] for r in answer["results"]] == list(ref["item"])
    np.testing.assert_allclose([r["score"] for r in answer["results"]], ref["score"], atol=1e-5)
    assert answer["results"][0]["image_url"] == f"/api/image/{answer['results'][0]['index']}.png?size=160"


def test_uploads_decode_as_training_decodes_files(
    session: ExploreSession, model: HashModel, tmp_path: Path, images: list[np.ndarray]
) -> None:
    from cxr_vlp.data.transforms import load_grayscale

    png16 = tmp_path / "a16.png"
    cv2.imwrite(str(png16), (images[0].astype(np.uint16) * 257 + 91).astype(np.uint16))
    jpg = tmp_path / "b.jpg"
    cv2.imwrite(str(jpg), cv2.cvtColor(images[2], cv2.COLOR_GRAY2BGR))
    for path in (png16, jpg):
        data = path.read_bytes()
        assert np.array_equal(decode_upload(data), load_grayscale(str(path)))
        key = session.upload(data)
        answer = session.image_query(upload=key)
        expected = model.zero_shot([path])
        for z in answer["zero_shot"]:
            assert z["prob"] == pytest.approx(float(expected[z["label"]].iloc[0]), abs=1e-6)
        assert "truth" not in answer and answer["true_rank"] is None and answer["query"]["study_id"] is None
    with pytest.raises(QueryError, match="not a PNG or JPEG"):
        decode_upload(b"GIF89a......", "x.gif")
    with pytest.raises(QueryError, match="x.png"):
        decode_upload(png16.read_bytes()[:-40], "x.png")
    with pytest.raises(QueryError, match="empty"):
        decode_upload(b"")
    with pytest.raises(QueryError, match="no such upload"):
        session.image_query(upload="nope")


def test_bad_queries_name_the_field(session: ExploreSession) -> None:
    for kwargs, field in (
        ({"index": 99}, "index=99"),
        ({"index": "1"}, "index='1'"),
        ({}, "exactly one"),
        ({"index": 1, "upload": "x"}, "exactly one"),
        ({"index": 1, "k": 0}, "k=0"),
    ):
        with pytest.raises(QueryError, match=re.escape(field)):
            session.image_query(**kwargs)
    for text in ("", None, 3):
        with pytest.raises(QueryError, match="text"):
            session.text_query(text)


def _request(server, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_server_routes_errors_and_headers(session: ExploreSession, images: list[np.ndarray]) -> None:
    server = make_server(session, "127.0.0.1", 0)
    assert server.server_address[1] != 0 and server.url.startswith("http://127.0.0.1:")
    server.start()
    try:
        status, headers, body = _request(server, "GET", "/")
        assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
        assert b"/static/app.js" in body
        status, _, body = _request(server, "GET", "/api/info")
        assert status == 200 and json.loads(body)["studies"] == len(REPORTS)
        status, _, body = _request(server, "POST", "/api/query/text", json.dumps({"text": "edema", "k": 2}).encode())
        assert status == 200 and [r["rank"] for r in json.loads(body)["results"]] == [1, 2]
        status, headers, body = _request(server, "GET", "/api/image/3.png?size=20")
        png = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        assert status == 200 and headers["Content-Type"] == "image/png" and max(png.shape) == 20
        status, _, body = _request(server, "POST", "/api/query/image", b"{not json")
        assert status == 400 and "not valid JSON" in json.loads(body)["error"]
        status, _, body = _request(server, "POST", "/api/query/image", json.dumps({"index": 70}).encode())
        assert status == 400 and "index=70" in json.loads(body)["error"]
        status, _, body = _request(server, "GET", "/static/../session.py")
        assert status == 404
        status, _, body = _request(server, "GET", "/api/image/abc.png")
        assert status == 400
    finally:
        server.shutdown()
        server.server_close()


def test_page_assets_reference_nothing_outside_the_server() -> None:
    pattern = re.compile(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(", re.IGNORECASE)
    for name in STATIC_FILES:
        text = static_text(name)
        assert not pattern.search(text), f"{name}: {pattern.search(text).group(0)}"


def test_static_export_embeds_the_answers_and_never_replaces_a_foreign_file(
    session: ExploreSession, tmp_path: Path
) -> None:
    page = export_static(session, tmp_path / "out", studies=2, texts=["edema"], cams=0)
    html = page.read_text()
    assert 'http-equiv="Content-Security-Policy"' in html and "/static/" not in html
    blob = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    data = json.loads(blob.replace("<\\/", "</"))
    assert set(data["image"]) == {"0", "1"} and set(data["text"]) == {"edema", "no edema"}
    assert data["image"]["1"]["query"]["image_url"].startswith("data:image/png;base64,")
    assert data["image"]["1"]["zero_shot"] == session.image_query(index=1)["zero_shot"]
    assert all(r["image_url"].startswith("data:") for r in data["text"]["edema"]["results"])
    assert export_static(session, tmp_path / "out", studies=1, texts=[], cams=0) == page  # its own page: replaced
    foreign = tmp_path / "mine" / "index.html"
    foreign.parent.mkdir()
    foreign.write_text("<html>my notes</html>")
    with pytest.raises(FileExistsError, match="index.html"):
        export_static(session, foreign.parent)
    assert foreign.read_text() == "<html>my notes</html>"
