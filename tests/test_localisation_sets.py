"""The temporal-localisation indexers (LAV-DF, AV-Deepfake1M) on small metadata trees made here,
in the official layouts, and the 1M-Deepfakes challenge's submission files."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from avlib.dataio.indexers import DatasetIndexError, index_dataset
from avlib.dataio.localisation_sets import (LOCALISATION_COLUMNS, index_avdeepfake1m, index_lavdf,
                                            parse_periods, write_submission)


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def lavdf_entry(file, periods=(), original=None, video=False, audio=False, **extra):
    return {"file": file, "n_fakes": len(periods), "fake_periods": [list(p) for p in periods], "timestamps": [],
            "duration": 4.224, "transcript": "not the point", "original": original, "modify_video": video,
            "modify_audio": audio, "split": file.split("/")[0], "video_frames": 103, "audio_channels": 1,
            "audio_frames": 67584, **extra}


LAVDF = [
    lavdf_entry("train/000001.mp4"),
    lavdf_entry("train/000002.mp4", [(1.0, 1.4)], original="train/000001.mp4", video=True),
    lavdf_entry("train/000003.mp4", [(0.5, 0.9), (2.0, 2.3)], original="000001.mp4", audio=True),
    lavdf_entry("dev/000004.mp4"),
    lavdf_entry("test/000005.mp4", [(3.1, 3.5)], original="test/000006.mp4", video=True, audio=True),
    lavdf_entry("test/000006.mp4"),
    lavdf_entry("test/000007.mp4"),             # listed, but its video is absent: skipped
]


@pytest.fixture
def lavdf_dir(tmp_path):
    folder = tmp_path / "lavdf"
    folder.mkdir()
    (folder / "metadata.json").write_text(json.dumps(LAVDF))
    for entry in LAVDF[:-1]:
        touch(folder / entry["file"])
    return folder


def avdf_entry(file, modify_type="real", visual=(), audio=(), original=None, audio_model="", **extra):
    visual, audio = [list(p) for p in visual], [list(p) for p in audio]
    return {"file": file, "original": original, "split": "train", "modify_type": modify_type,
            "audio_model": audio_model, "fake_segments": sorted(visual + audio) if modify_type != "real" else [],
            "visual_fake_segments": visual, "audio_fake_segments": audio, "video_frames": 150,
            "audio_frames": 96000, **extra}


CLIP = "id00076/xUsjbcKwdiU/00001"
AVDF_TRAIN = [
    avdf_entry(f"{CLIP}/real.mp4", original=f"VoxCeleb2/dev/mp4/{CLIP}.mp4"),
    avdf_entry(f"{CLIP}/fake_video_real_audio.mp4", "visual_modified", visual=[(0.4, 0.9)],
               original=f"{CLIP}/real.mp4"),
    avdf_entry(f"{CLIP}/real_video_fake_audio.mp4", "audio_modified", audio=[(1.2, 1.5)], original=f"{CLIP}/real.mp4",
               audio_model="vits"),
    avdf_entry(f"{CLIP}/fake_video_fake_audio.mp4", "both_modified", visual=[(2.0, 2.6)], audio=[(2.0, 2.6)],
               original=f"{CLIP}/real.mp4", audio_model="yourtts", video_model="talklip"),   # an extra key (++)
]
AVDF_VAL = [avdf_entry("id00999/abc/00002/real.mp4", split="val")]
AVDF_TEST = ["000001.mp4", "000002.mp4"]


@pytest.fixture
def avdf_dir(tmp_path):
    folder = tmp_path / "avdeepfake1m"
    folder.mkdir()
    (folder / "train_metadata.json").write_text(json.dumps(AVDF_TRAIN))
    (folder / "val_metadata.json").write_text(json.dumps(AVDF_VAL))
    (folder / "test_files.txt").write_text("\n".join(AVDF_TEST) + "\n")
    for entry in AVDF_TRAIN:
        touch(folder / "train" / entry["file"])
    for entry in AVDF_VAL:
        touch(folder / "val" / entry["file"])
    for file in AVDF_TEST:
        touch(folder / "test" / file)
    return folder


def test_lavdf_labels_periods_categories_and_identities(lavdf_dir):
    frame = index_dataset("lavdf", lavdf_dir)
    assert list(frame.columns) == LOCALISATION_COLUMNS
    rows = frame.set_index("path")
    assert list(rows.index) == [e["file"] for e in sorted(LAVDF[:-1], key=lambda e: e["file"])]
    assert rows["label"].to_dict() == {"dev/000004.mp4": 0, "test/000005.mp4": 1, "test/000006.mp4": 0,
                                       "train/000001.mp4": 0, "train/000002.mp4": 1, "train/000003.mp4": 1}
    assert rows.loc["train/000002.mp4", "category"] == "visual_modified"
    assert rows.loc["train/000003.mp4", "category"] == "audio_modified"
    assert rows.loc["test/000005.mp4", "category"] == "both_modified"
    assert rows.loc["train/000001.mp4", "category"] == "real"
    assert parse_periods(rows.loc["train/000003.mp4", "fake_periods"]) == [(0.5, 0.9), (2.0, 2.3)]
    assert parse_periods(rows.loc["train/000003.mp4", "audio_fake_periods"]) == [(0.5, 0.9), (2.0, 2.3)]
    assert parse_periods(rows.loc["train/000003.mp4", "visual_fake_periods"]) == []
    assert parse_periods(rows.loc["test/000005.mp4", "visual_fake_periods"]) == [(3.1, 3.5)]
    # a fake shares its original's identity, whether `original` names the split folder or not
    assert rows.loc[["train/000001.mp4", "train/000002.mp4", "train/000003.mp4"], "identity"].tolist() == ["000001"] * 3
    assert rows.loc["test/000005.mp4", "identity"] == rows.loc["test/000006.mp4", "identity"] == "000006"
    assert rows.loc["test/000005.mp4", "original"] == "test/000006.mp4"
    assert rows.loc["train/000001.mp4", "original"] == ""
    assert rows["split"].to_dict()["dev/000004.mp4"] == "dev"
    assert (rows["dataset"] == "lavdf").all() and (rows["method"] == "").all() and (rows["style"] == "").all()
    assert rows.loc["train/000001.mp4", ["video_frames", "audio_frames", "duration"]].tolist() == [103, 67584, 4.224]
    assert frame.attrs["missing_files"] == {"test": 1}
    # the release folder may sit in data_dir/LAV-DF; paths stay relative to data_dir
    lavdf_dir.rename(lavdf_dir.parent / "LAV-DF")
    nested = index_lavdf(lavdf_dir.parent)
    assert nested["path"].tolist() == ["LAV-DF/" + p for p in frame["path"]]
    assert nested["file"].tolist() == frame["file"].tolist()


def test_avdeepfake1m_labels_periods_categories_and_identities(avdf_dir):
    frame = index_dataset("avdeepfake1m", avdf_dir)
    assert list(frame.columns) == LOCALISATION_COLUMNS
    rows = frame.set_index("path")
    real, fv, fa, both = (f"train/{e['file']}" for e in AVDF_TRAIN)
    assert rows.loc[[real, fv, fa, both], "label"].tolist() == [0, 1, 1, 1]
    assert rows.loc[[real, fv, fa, both], "category"].tolist() == ["real", "visual_modified", "audio_modified",
                                                                    "both_modified"]
    assert rows.loc[[real, fv, fa, both], "method"].tolist() == ["", "", "vits", "yourtts"]
    assert set(rows.loc[[real, fv, fa, both], "identity"]) == {"id00076"}
    assert rows.loc[fv, "file"] == f"{CLIP}/fake_video_real_audio.mp4"
    assert parse_periods(rows.loc[fa, "audio_fake_periods"]) == [(1.2, 1.5)]
    assert parse_periods(rows.loc[fa, "visual_fake_periods"]) == []
    assert parse_periods(rows.loc[both, "fake_periods"]) == [(2.0, 2.6), (2.0, 2.6)]
    assert rows.loc[real, "duration"] == 150 / 25 and rows.loc[real, "video_frames"] == 150
    assert rows.loc["val/id00999/abc/00002/real.mp4", ["split", "identity"]].tolist() == ["val", "id00999"]
    assert rows.loc[both, "original"] == f"{CLIP}/real.mp4"


def test_an_unlabelled_test_list_is_indexed_with_label_minus_one(avdf_dir):
    frame = index_avdeepfake1m(avdf_dir)
    test = frame[frame["split"] == "test"].set_index("path")
    assert list(test.index) == ["test/000001.mp4", "test/000002.mp4"]
    assert (test["label"] == -1).all() and (test["fake_periods"] == "[]").all()
    assert (test["video_frames"] == -1).all() and (test["duration"] == -1.0).all() and (test["category"] == "").all()
    assert test["file"].tolist() == AVDF_TEST
    # a listed file that is absent stays, for the submission must cover it; it is counted as missing
    (avdf_dir / "test" / AVDF_TEST[1]).unlink()
    frame = index_avdeepfake1m(avdf_dir)
    assert frame[frame["split"] == "test"]["file"].tolist() == AVDF_TEST and frame.attrs["missing_files"] == {"test": 1}
    # a subset whose labels are published is read from its metadata, not its file list
    (avdf_dir / "val_files.txt").write_text(AVDF_VAL[0]["file"] + "\n")
    assert index_avdeepfake1m(avdf_dir).set_index("path").loc["val/id00999/abc/00002/real.mp4", "label"] == 0


def test_an_extra_style_key_is_carried(avdf_dir):
    styled = [dict(e, style="cartoon") for e in AVDF_TRAIN]
    (avdf_dir / "train_metadata.json").write_text(json.dumps(styled))
    frame = index_avdeepfake1m(avdf_dir)
    assert set(frame.loc[frame["split"] == "train", "style"]) == {"cartoon"}
    assert set(frame.loc[frame["split"] != "train", "style"]) == {""}


def test_the_index_round_trips_through_csv(avdf_dir):
    frame = index_avdeepfake1m(avdf_dir)
    back = pd.read_csv(io.StringIO(frame.to_csv(index=False)), dtype=str, keep_default_na=False)
    assert [parse_periods(t) for t in back["fake_periods"]] == [parse_periods(t) for t in frame["fake_periods"]]
    assert parse_periods(float("nan")) == parse_periods("") == parse_periods(None) == []


@pytest.mark.parametrize("dataset", ["lavdf", "avdeepfake1m"])
def test_a_missing_field_is_named_with_its_entry_and_file(lavdf_dir, avdf_dir, dataset):
    if dataset == "lavdf":
        folder, meta, entries = lavdf_dir, "metadata.json", [dict(e) for e in LAVDF]
        del entries[1]["fake_periods"], entries[1]["modify_audio"]
        missing, file = "fake_periods, modify_audio", LAVDF[1]["file"]
    else:
        folder, meta, entries = avdf_dir, "train_metadata.json", [dict(e) for e in AVDF_TRAIN]
        del entries[2]["visual_fake_segments"]
        missing, file = "visual_fake_segments", AVDF_TRAIN[2]["file"]
    (folder / meta).write_text(json.dumps(entries))
    with pytest.raises(DatasetIndexError) as caught:
        index_dataset(dataset, folder)
    assert meta in str(caught.value) and repr(file) in str(caught.value) and missing in str(caught.value)


def test_malformed_metadata_is_named(lavdf_dir, avdf_dir):
    (lavdf_dir / "metadata.json").write_text('[{"file": "train/000001.mp4",')
    with pytest.raises(DatasetIndexError, match="metadata.json is not valid JSON"):
        index_lavdf(lavdf_dir)
    entries = [dict(AVDF_TRAIN[0], modify_type="geometry_modified")]
    (avdf_dir / "train_metadata.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetIndexError, match="modify_type 'geometry_modified'"):
        index_avdeepfake1m(avdf_dir)
    entries = [dict(AVDF_TRAIN[0], fake_segments=[[1.0]])]
    (avdf_dir / "train_metadata.json").write_text(json.dumps(entries))
    with pytest.raises(DatasetIndexError, match="fake_segments"):
        index_avdeepfake1m(avdf_dir)


def test_a_folder_without_the_listed_videos_or_metadata_is_an_error(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps(LAVDF))
    with pytest.raises(DatasetIndexError, match=r"none of the 7 video files listed in .*metadata.json exists"):
        index_lavdf(tmp_path)
    with pytest.raises(DatasetIndexError, match="holds no AV-Deepfake1M metadata"):
        index_avdeepfake1m(tmp_path / "elsewhere")
    with pytest.raises(DatasetIndexError, match="holds no LAV-DF"):
        index_lavdf(tmp_path / "elsewhere")


def test_a_localisation_submission_is_the_challenge_json(tmp_path):
    path = tmp_path / "out" / "prediction.json"
    write_submission({"000001.mp4": [(0.2315, 4.24, 5.52), (0.9541, 4.0, 4.8)]}, path,
                     files=["000001.mp4", "000002.mp4"])
    assert json.loads(path.read_text()) == {"000001.mp4": [[0.9541, 4.0, 4.8], [0.2315, 4.24, 5.52]],
                                            "000002.mp4": []}
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="start <= end"):
        write_submission({"a.mp4": [(0.5, 2.0, 1.0)]}, path)
    with pytest.raises(ValueError, match="not among"):
        write_submission({"b.mp4": []}, path, files=["a.mp4"])


def test_a_classification_submission_reads_back_as_the_official_scorer_reads_it(tmp_path, avdf_dir):
    frame = index_avdeepfake1m(avdf_dir)
    test = frame[frame["label"] == -1]
    scores = {file: 0.1 * (i + 1) for i, file in enumerate(test["file"])}
    path = tmp_path / "prediction.txt"
    write_submission(scores, path, "classification", files=test["file"])
    assert path.read_text().splitlines() == ["000001.mp4;0.1", "000002.mp4;0.2"]
    table = pd.read_csv(path, header=None, sep=";")      # as avdeepfake1m.evaluation.auc reads it
    assert dict(zip(table[0], table[1])) == scores
    with pytest.raises(ValueError, match="have no score"):
        write_submission({"000001.mp4": 0.5}, path, "classification", files=test["file"])
    with pytest.raises(ValueError, match="track"):
        write_submission({}, path, "segmentation")
