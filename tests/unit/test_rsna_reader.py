"""RSNA Pneumonia reader on a tiny tree in the published layout (DICOMs written with pydicom), and DICOM decoding
in load_grayscale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_vlp.data.readers import read_rsna_pneumonia
from cxr_vlp.data.transforms import load_grayscale
from cxr_vlp.text.labels import CHEXPERT_LABELS

PNEUMONIA = CHEXPERT_LABELS.index("Pneumonia")


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    bits_stored: int | None = None,
    photometric: str = "MONOCHROME2",
    signed: bool = False,
    view: str = "PA",
    sex: str = "F",
    age: str = "051Y",
) -> Path:
    """A single-frame grayscale DICOM file (uncompressed, explicit VR little endian), as the challenge ships."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.Modality, ds.ViewPosition, ds.PatientSex, ds.PatientAge = path.stem, "CR", view, sex, age
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    allocated = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored = allocated, bits_stored or allocated
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, int(signed)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def rsna_image(positive: bool, seed: int, size: int = 64) -> np.ndarray:
    """Noise with a bright lower-right patch for pneumonia patients (something a probe can learn)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 90, size=(size, size)).astype(np.uint8)
    if positive:
        image[size // 2 :, size // 2 :] = np.clip(image[size // 2 :, size // 2 :].astype(int) + 140, 0, 255)
    return image


def write_rsna_tree(root: Path, n_patients: int = 12, png_every: int = 0, seed: int = 0) -> dict[str, int]:
    """``stage_2_train_labels.csv`` + ``stage_2_train_images/`` of ``n_patients`` (every 3rd positive with two
    boxes, every 3rd + 1 positive with one); every ``png_every``-th image converted to PNG (0: DICOMs only).
    Returns ``patientId -> Target``."""
    import cv2

    rows, targets = ["patientId,x,y,width,height,Target"], {}
    for i in range(n_patients):
        pid = f"{i:04d}abcd-{seed:02d}ef-4a5b-9c8d-0123456789ab"
        positive = i % 3 != 2
        targets[pid] = int(positive)
        if positive:
            rows += [f"{pid},{10 + i},20,30.5,40,1"] * (2 if i % 3 == 0 else 1)
        else:
            rows.append(f"{pid},,,,,0")
        image = rsna_image(positive, seed * 1000 + i)
        if png_every and i % png_every == 0:
            (root / "stage_2_train_images").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / "stage_2_train_images" / f"{pid}.png"), image)
        else:
            write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", image, view="AP" if i % 2 else "PA")
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    return targets


def test_reads_one_study_per_patient_with_max_target_and_boxes(tmp_path: Path) -> None:
    targets = write_rsna_tree(tmp_path, n_patients=7, png_every=3)
    table = read_rsna_pneumonia(tmp_path)
    assert table.study_ids == list(targets) and table.subject_ids == table.study_ids
    np.testing.assert_array_equal(table.labels[:, PNEUMONIA], [targets[p] for p in table.study_ids])
    others = np.delete(table.labels, [PNEUMONIA, CHEXPERT_LABELS.index("No Finding")], axis=1)
    assert np.isnan(others).all()  # RSNA labels only pneumonia
    assert [len(b) for b in table.extra["boxes"]] == [2, 1, 0, 2, 1, 0, 2]
    assert table.extra["boxes"][0][0] == [10.0, 20.0, 30.5, 40.0]
    assert all(table.extra["no_report"]) and table.findings == [None] * 7
    assert table.impression[0] and "pneumonia" in table.impression[0].lower()
    assert table.impression[2] and table.impression[2].lower().startswith(("no ", "there is no"))
    suffixes = [Path(p[0]).suffix for p in table.image_paths]
    assert suffixes == [".png", ".dcm", ".dcm", ".png", ".dcm", ".dcm", ".png"]
    assert table.view_names[0] == ["FRONTAL"] and table.split is None


def test_headers_give_views_sex_and_age(tmp_path: Path) -> None:
    write_rsna_tree(tmp_path, n_patients=3)
    table = read_rsna_pneumonia(tmp_path, read_headers=True)
    assert [v[0] for v in table.view_names] == ["PA", "AP", "PA"]
    assert table.extra["sex"] == ["F"] * 3 and table.extra["age"] == [51] * 3


def test_png_preferred_when_listed_first_and_missing_images_skipped(tmp_path: Path) -> None:
    import cv2

    targets = write_rsna_tree(tmp_path, n_patients=4)
    first = next(iter(targets))
    cv2.imwrite(str(tmp_path / "stage_2_train_images" / f"{first}.png"), rsna_image(True, 5))
    (tmp_path / "stage_2_train_images" / f"{list(targets)[1]}.dcm").unlink()
    table = read_rsna_pneumonia(tmp_path, extensions=[".png", ".dcm"])
    assert len(table) == 3 and table.image_paths[0][0].endswith(".png")
    assert list(targets)[1] not in table.study_ids


def test_bad_input_names_file_row_and_column(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="rsna root folder not found"):
        read_rsna_pneumonia(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="stage_2_train_labels.csv"):
        read_rsna_pneumonia(tmp_path)
    write_rsna_tree(tmp_path, n_patients=3)
    csv = tmp_path / "stage_2_train_labels.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0], lines[1], lines[2].replace(",1", ",2")]) + "\n")
    with pytest.raises(ValueError, match=r"stage_2_train_labels.csv: row 2, column 'Target': must be 0 or 1"):
        read_rsna_pneumonia(tmp_path)
    csv.write_text("\n".join([lines[0], lines[1].replace(",20,", ",abc,")]) + "\n")
    with pytest.raises(ValueError, match=r"row 1, column 'y': not a number"):
        read_rsna_pneumonia(tmp_path)
    csv.write_text("\n".join([lines[0], lines[1].split(",")[0] + ",,,,,1"]) + "\n")
    with pytest.raises(ValueError, match=r"row 1: Target 1 needs a box"):
        read_rsna_pneumonia(tmp_path)
    csv.write_text("patientId,x,y\nabc,1,2\n")
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['Target'\]"):
        read_rsna_pneumonia(tmp_path)
    csv.write_text("patientId,Target\nnobody,0\n")
    with pytest.raises(FileNotFoundError, match="none of the 1 patients"):
        read_rsna_pneumonia(tmp_path)


# ---------------------------------------------------------------------------------------------- DICOM decoding
def test_dicom_8_bit_is_read_exactly(tmp_path: Path) -> None:
    image = rsna_image(True, 1, size=48)[:, :40]
    assert np.array_equal(load_grayscale(str(write_dicom(tmp_path / "a.dcm", image))), image)
    # the DICM marker is enough, whatever the name
    path = write_dicom(tmp_path / "b.dcm", image).rename(tmp_path / "b.img")
    assert np.array_equal(load_grayscale(str(path)), image)


@pytest.mark.parametrize("bits", [12, 16])
def test_dicom_deep_pixels_scale_by_bits_stored(tmp_path: Path, bits: int) -> None:
    values = np.random.default_rng(bits).integers(0, 2**bits, size=(20, 30)).astype(np.uint16)
    out = load_grayscale(str(write_dicom(tmp_path / "deep.dcm", values, bits_stored=bits)))
    expected = (values.astype(np.int64) >> (bits - 8)).astype(np.uint8)  # direct transcription of the rule
    assert out.dtype == np.uint8 and np.array_equal(out, expected)


def test_dicom_monochrome1_inverted_and_signed_shifted(tmp_path: Path) -> None:
    image = rsna_image(False, 2, size=16)
    out = load_grayscale(str(write_dicom(tmp_path / "m1.dcm", image, photometric="MONOCHROME1")))
    assert np.array_equal(out, 255 - image)
    signed = np.array([[-2048, 0], [2047, -1]], dtype=np.int16)
    out = load_grayscale(str(write_dicom(tmp_path / "s.dcm", signed, bits_stored=12, signed=True)))
    assert out.tolist() == [[0, 128], [255, 127]]


def test_broken_dicom_is_an_oserror_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI")
    with pytest.raises(OSError, match=r"unreadable DICOM image: .*broken\.dcm"):
        load_grayscale(str(path))


def test_the_image_cache_reads_dicom_and_names_a_broken_one(tmp_path: Path) -> None:
    from cxr_vlp.data.cache import build_cache, load_cache_map, read_failed, size_dir

    image = rsna_image(True, 3, size=64)
    good = write_dicom(tmp_path / "good.dcm", image)
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\1" * 40)
    summary = build_cache([str(good), str(broken)], tmp_path / "cache", size=32, workers=1, progress=False)
    cached = load_cache_map(tmp_path / "cache", 32)
    assert str(good) in cached and load_grayscale(cached[str(good)]).shape == (32, 32)
    failed = read_failed(size_dir(tmp_path / "cache", 32) / "failed.csv")
    assert list(failed) == [str(broken)] and "broken.dcm" in failed[str(broken)]
    assert summary is not None
