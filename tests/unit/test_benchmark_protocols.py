"""Protocol builders of the benchmark against slow transcriptions: the 5×200 selection rule, the CheXpert test
labels reader, the prompt set config."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_vlp.benchmark.prompts import BenchmarkPrompts
from cxr_vlp.benchmark.protocols import COMPETITION_LABELS, build_protocols, read_chexpert_test, select_5x200
from cxr_vlp.text.labels import CHEXPERT_LABELS


def _slow_5x200(ids, labels, per_class, seed, others):
    """Transcription of the rule: per class in order, the ids positive for it and (not positive | known negative)
    for every other class, sorted; one default_rng(seed) permutes each list; the first per_class kept, sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(labels.shape[1]):
        eligible = []
        for i, sid in enumerate(ids):
            if labels[i, c] != 1:
                continue
            fine = True
            for o in range(labels.shape[1]):
                if o == c:
                    continue
                if others == "not_positive" and labels[i, o] == 1:
                    fine = False
                if others == "negative" and not labels[i, o] == 0:
                    fine = False
            if fine:
                eligible.append(sid)
        eligible.sort()
        perm = rng.permutation(len(eligible))
        picked = sorted(eligible[int(j)] for j in perm[:per_class])
        chosen += [(sid, c) for sid in picked]
    return chosen


def _pool(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((n, 5)) < 0.25, 1.0, 0.0)
    labels[rng.random((n, 5)) < 0.15] = np.nan
    ids = [f"s{int(x):05d}" for x in rng.permutation(n) * 7]
    return ids, labels


@pytest.mark.parametrize("others", ["not_positive", "negative"])
def test_5x200_matches_slow_transcription(others: str) -> None:
    ids, labels = _pool(900, 0)
    sel = select_5x200(ids, labels, COMPETITION_LABELS, per_class=40, seed=5, others=others)
    expected = _slow_5x200(ids, labels, 40, 5, others)
    assert list(zip(sel.study_ids, sel.classes)) == [(s, COMPETITION_LABELS[c]) for s, c in expected]
    assert len(set(sel.study_ids)) == len(sel.study_ids)  # classes are disjoint
    row = {s: i for i, s in enumerate(ids)}
    for sid, cls in zip(sel.study_ids, sel.classes):
        y = labels[row[sid]]
        assert y[COMPETITION_LABELS.index(cls)] == 1 and np.nansum(y) == 1
    lines = "".join(f"{s},{c}\n" for s, c in zip(sel.study_ids, sel.classes))
    assert sel.sha256 == hashlib.sha256(lines.encode()).hexdigest()


def test_5x200_ignores_row_order_and_reports_small_pools() -> None:
    ids, labels = _pool(300, 1)
    a = select_5x200(ids, labels, COMPETITION_LABELS, per_class=200, seed=0)
    order = np.random.default_rng(9).permutation(len(ids))
    b = select_5x200([ids[i] for i in order], labels[order], COMPETITION_LABELS, per_class=200, seed=0)
    assert a.sha256 == b.sha256
    assert a.short == a.counts and all(n < 200 for n in a.counts.values())  # every eligible study is taken
    assert a.counts == a.available
    other = select_5x200(ids, labels, COMPETITION_LABELS, per_class=5, seed=1)
    assert other.sha256 != select_5x200(ids, labels, COMPETITION_LABELS, per_class=5, seed=2).sha256
    assert other.short == {}


def test_5x200_bad_input() -> None:
    with pytest.raises(ValueError, match=r"labels must be \[2, 5\]"):
        select_5x200(["a", "b"], np.zeros((2, 4)), COMPETITION_LABELS)
    with pytest.raises(ValueError, match="others must be one of"):
        select_5x200(["a"], np.zeros((1, 5)), COMPETITION_LABELS, others="zeros")


def test_read_chexpert_test_groups_images_into_studies(tmp_path) -> None:
    root = tmp_path / "CheXpert-v1.0"
    paths = [
        "CheXpert-v1.0/test/patient64741/study1/view1_frontal.jpg",
        "CheXpert-v1.0/test/patient64741/study1/view2_lateral.jpg",
        "CheXpert-v1.0/test/patient64742/study1/view1_frontal.jpg",
    ]
    for p in paths:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(tmp_path / p)
    df = pd.DataFrame({"Path": paths, "Cardiomegaly": [1, 1, 0], "Edema": [0, 0, 1]})
    df.to_csv(root / "test_labels.csv", index=False)
    table = read_chexpert_test(root / "test_labels.csv", root)
    assert table.study_ids == ["patient64741_study1", "patient64742_study1"]
    assert [len(p) for p in table.image_paths] == [2, 1]
    card, edema = CHEXPERT_LABELS.index("Cardiomegaly"), CHEXPERT_LABELS.index("Edema")
    assert table.labels[:, card].tolist() == [1.0, 0.0] and table.labels[:, edema].tolist() == [0.0, 1.0]
    assert np.isnan(table.labels[0, CHEXPERT_LABELS.index("Fracture")])
    df.assign(Path=["x.jpg", *paths[1:]]).to_csv(root / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv: row 1, column 'Path'"):
        read_chexpert_test(root / "bad.csv", root)


def test_prompt_set_from_config() -> None:
    prompts = BenchmarkPrompts.from_config(
        {
            "templates": ["{phrase}", "there is {phrase}"],
            "negative": "no {phrase}",
            "phrases": {"Edema": "pulmonary edema"},
            "labels": {"No Finding": {"positive": ["normal"], "negative": ["bad"]}},
        }
    )
    assert prompts.positive("Edema") == ["pulmonary edema", "there is pulmonary edema"]
    assert prompts.negatives("Edema") == ["no pulmonary edema"]
    assert prompts.prompt_set(["No Finding"]).negative == {"No Finding": ["bad"]}
    with pytest.raises(ValueError, match="no phrase or prompt lists for label 'Fracture'"):
        prompts.positive("Fracture")
    with pytest.raises(ValueError, match=r"template 'x' has no \{phrase\}"):
        BenchmarkPrompts.from_config({"templates": ["x"], "negative": "no {phrase}"})
    with pytest.raises(ValueError, match="unknown label"):
        BenchmarkPrompts.from_config({"templates": ["{phrase}"], "negative": "no {phrase}", "phrases": {"Edemaa": "e"}})


def test_build_protocols_errors() -> None:
    with pytest.raises(ValueError, match="at least one protocol"):
        build_protocols({})
    with pytest.raises(ValueError, match=r"benchmark.x.kind='nope'"):
        build_protocols({"x": {"kind": "nope"}})
    with pytest.raises(ValueError, match=r"benchmark.y.labels: unknown label"):
        build_protocols({"y": {"kind": "labels", "labels": ["Pneumonitis"]}})
