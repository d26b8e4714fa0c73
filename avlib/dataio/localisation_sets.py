"""Indexers for the temporal-localisation datasets LAV-DF and AV-Deepfake1M (and ++), read from
their own metadata JSON, and the 1M-Deepfakes Detection Challenge's submission files.

One record per clip, as for the other indexers (avlib.dataio.indexers): the columns of
indexers.COLUMNS (`path` relative to data_dir; label 0 REAL, 1 FAKE: 1 when the clip has a fake
segment) and then LOCALISATION_EXTRA:

- `split`: the dataset's own split (LAV-DF train/dev/test; AV-Deepfake1M train/val/test, ++
  train/val/testA/testB);
- `file`: the dataset's own key for the clip, the metadata's `file` (a line of a test list): what
  the official evaluators and write_submission key on. For AV-Deepfake1M it lacks the split
  folder that `path` has (`path` val/id00076/x/00001/real.mp4, `file` id00076/x/00001/real.mp4);
- `fake_periods`, `visual_fake_periods`, `audio_fake_periods`: JSON text of [[start, end], ...]
  in seconds (text, so the frame round-trips through CSV; parse_periods reads it back);
- `video_frames`, `audio_frames`, `duration` (seconds), `original` ("" for none), `style` (the
  entry's extra `style` key, which our synthetic generator writes; "" when absent).

`category` is the manipulated modality, one vocabulary for both datasets (CATEGORIES): real,
visual_modified, audio_modified, both_modified. `method` is the entry's audio_model ("" for
none, and always for LAV-DF, which names no generator).

LAV-DF (github.com/ControlNet/LAV-DF, dataset/lavdf.py `Metadata`, utils.py
`generate_metadata_min`): <data_dir>/metadata.json (metadata.min.json, the official loader's copy
without `timestamps` and `transcript`, when the full file is absent; either directly in data_dir
or in data_dir/LAV-DF), a JSON list of entries {file: "train/000001.mp4", n_fakes, fake_periods
[[start, end] s], duration (s), original (null for a real clip), modify_video, modify_audio,
split (train | dev | test), video_frames, audio_channels, audio_frames}; the video is
<root>/<file>. LAV-DF gives one period list and the two modify flags: the visual and audio
periods are fake_periods for each flagged modality, [] for the other. Identity: LAV-DF names no
speaker, so a clip's identity is the file stem of the real clip at the root of its `original`
chain (its own stem for a real clip), which a fake shares with the real it was made from. Stems
are unique across the release: the official loader caches labels as label/<stem>.npy for all
splits. Matching by stem also holds whether `original` is written with its split folder or not.

AV-Deepfake1M (github.com/ControlNet/AV-Deepfake1M, README "Metadata Structure" and "Usage",
python/avdeepfake1m/loader.py `Metadata` and `AVDeepfake1mDataModule.setup`):
<data_dir>/<subset>_metadata.json for each labelled subset (train, val), a JSON list of entries
{file: "id00076/<youtube id>/00001/real.mp4", original, split, modify_type (real |
visual_modified | audio_modified | both_modified), audio_model, fake_segments,
visual_fake_segments, audio_fake_segments ([[start, end] s]), video_frames, audio_frames}
(++ adds video_model and others, tolerated); the video is <data_dir>/<subset>/<file>. The test
subset has no labels: <data_dir>/<subset>_files.txt lists its files, one a line (test for
AV-Deepfake1M, testA and testB for ++), videos at <data_dir>/<subset>/<file>. Such a subset is
indexed so that it can be predicted, as the official loader's dummy metadata does: label -1,
category and method "", periods "[]", video_frames, audio_frames and duration -1 (unknown). A
subset with a <subset>_metadata.json is read from it, never from its file list. `duration` is
video_frames / 25, as the official Metadata computes it (every video is 25 fps). Identity: the
VoxCeleb2 speaker id, the first path component of `file` of the form id<digits> (AV-Deepfake1M:
the first component; a fake lies in the folder of the real it was made from); failing that the
first path component; a file listed without a folder is its own identity.

Missing required fields raise DatasetIndexError naming the metadata file, the entry (its
`file`) and the fields; so do a file that is not JSON and malformed values. Labelled entries
whose video is absent are skipped; an absent file of an unlabelled test list is kept (the
challenge's scorer needs an entry for every listed file: decoding it fails, it is reported and
submitted without segments). Both are counted in frame.attrs["missing_files"], by split; a
folder holding none of the listed videos raises DatasetIndexError.

Submissions (write_submission), as the challenge's details page (deepfakes1m.github.io/details,
/2025/details) and the SDK's readers (avdeepfake1m/evaluation/auc.py, src/loc_1d.rs) define them:
classification, a text file of lines `<file>;<score>` (read with pandas sep=";", no header);
temporal localisation, a JSON object {<file>: [[confidence, start, end], ...]}, times in seconds
(the README evaluates with fps 1). LAV-DF's own evaluate.py differs: its proposals are in frames
(25 fps).
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath

import pandas as pd

from avlib.core.paths import atomic_write_bytes
from avlib.dataio.records import COLUMNS, DatasetIndexError

LOCALISATION_EXTRA = ["split", "file", "fake_periods", "visual_fake_periods", "audio_fake_periods",
                      "video_frames", "audio_frames", "duration", "original", "style"]
LOCALISATION_COLUMNS = COLUMNS + LOCALISATION_EXTRA
CATEGORIES = ("real", "visual_modified", "audio_modified", "both_modified")
UNLABELLED = -1                 # label (and frame counts, duration) of a clip whose labels are hidden
AVDEEPFAKE1M_FPS = 25
LAVDF_METADATA = ("metadata.json", "metadata.min.json")
LAVDF_REQUIRED = ("file", "fake_periods", "duration", "original", "modify_video", "modify_audio",
                  "video_frames", "audio_frames")
AVDEEPFAKE1M_REQUIRED = ("file", "original", "modify_type", "fake_segments", "visual_fake_segments",
                         "audio_fake_segments", "video_frames", "audio_frames")
_SUBSET_ORDER = ("train", "dev", "val", "test", "testA", "testB")
_CATEGORY_OF_FLAGS = {(False, False): "real", (True, False): "visual_modified",
                      (False, True): "audio_modified", (True, True): "both_modified"}


# ---------------------------------------------------------------------------------- LAV-DF

def lavdf_root(data_dir: Path) -> Path:
    """data_dir itself or data_dir/LAV-DF, whichever holds metadata.json (or metadata.min.json)."""
    for cand in (data_dir, data_dir / "LAV-DF"):
        if any((cand / name).is_file() for name in LAVDF_METADATA):
            return cand
    raise DatasetIndexError(f"{data_dir} holds no LAV-DF {' or '.join(LAVDF_METADATA)} "
                            f"(nor does {data_dir / 'LAV-DF'})")


def index_lavdf(data_dir: Path) -> pd.DataFrame:
    """LAV-DF from its metadata.json (see the module docstring)."""
    data_dir = Path(data_dir)
    root = lavdf_root(data_dir)
    meta_path = next(root / name for name in LAVDF_METADATA if (root / name).is_file())
    entries = _read_entries(meta_path)
    for entry in entries:
        _require(entry, LAVDF_REQUIRED, meta_path)
    source = {_stem(e["file"]): _stem(e["original"]) for e in entries if e["original"]}
    records, missing = [], Counter()
    for entry in entries:
        file = entry["file"]
        split = str(entry.get("split") or PurePosixPath(file).parts[0])
        if not (root / file).is_file():
            missing[split] += 1
            continue
        flags = tuple(_flag(entry, name, meta_path) for name in ("modify_video", "modify_audio"))
        periods = _periods(entry, "fake_periods", meta_path)
        records.append(dict(
            path=(root / file).relative_to(data_dir).as_posix(), label=int(bool(periods)), dataset="lavdf",
            category=_CATEGORY_OF_FLAGS[flags], method="", identity=_root_stem(_stem(file), source),
            split=split, file=file, fake_periods=periods, visual_fake_periods=periods if flags[0] else [],
            audio_fake_periods=periods if flags[1] else [],
            video_frames=_number(entry, "video_frames", meta_path, int),
            audio_frames=_number(entry, "audio_frames", meta_path, int),
            duration=_number(entry, "duration", meta_path, float),
            original=str(entry["original"] or ""), style=str(entry.get("style") or "")))
    return _localisation_frame(records, missing, len(entries), [meta_path], root)


def _root_stem(stem: str, source: dict[str, str]) -> str:
    """Follow `original` (by stem) to the clip it starts from."""
    seen = {stem}
    while stem in source and source[stem] not in seen:
        stem = source[stem]
        seen.add(stem)
    return stem


# ---------------------------------------------------------------------------------- AV-Deepfake1M

def avdeepfake1m_subsets(data_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """({subset: <subset>_metadata.json}, {subset: <subset>_files.txt}) in data_dir, the file
    lists only for subsets without metadata (the unlabelled test subsets)."""
    labelled = {p.name[:-len("_metadata.json")]: p for p in data_dir.glob("*_metadata.json") if p.is_file()}
    unlabelled = {p.name[:-len("_files.txt")]: p for p in data_dir.glob("*_files.txt") if p.is_file()}
    return (dict(sorted(labelled.items(), key=_subset_order)),
            dict(sorted(((k, v) for k, v in unlabelled.items() if k not in labelled), key=_subset_order)))


def _subset_order(item: tuple[str, Path]) -> tuple[int, str]:
    return _SUBSET_ORDER.index(item[0]) if item[0] in _SUBSET_ORDER else len(_SUBSET_ORDER), item[0]


def index_avdeepfake1m(data_dir: Path) -> pd.DataFrame:
    """AV-Deepfake1M or AV-Deepfake1M++ from <subset>_metadata.json and <subset>_files.txt (see
    the module docstring)."""
    data_dir = Path(data_dir)
    labelled, unlabelled = avdeepfake1m_subsets(data_dir)
    if not labelled and not unlabelled:
        raise DatasetIndexError(f"{data_dir} holds no AV-Deepfake1M metadata: expected train_metadata.json, "
                                f"val_metadata.json and/or a test list such as test_files.txt or testA_files.txt")
    records, absent, missing, listed = [], [], Counter(), 0
    for subset, meta_path in labelled.items():
        entries = _read_entries(meta_path)
        listed += len(entries)
        for entry in entries:
            _require(entry, AVDEEPFAKE1M_REQUIRED, meta_path)
        for entry in entries:
            file = entry["file"]
            if not (data_dir / subset / file).is_file():
                missing[subset] += 1
                continue
            category = str(entry["modify_type"]).strip().lower().replace("-", "_")
            if category not in CATEGORIES:
                raise DatasetIndexError(f"{meta_path}: entry {file!r} has modify_type {entry['modify_type']!r}, "
                                        f"not one of {', '.join(CATEGORIES)}")
            frames = _number(entry, "video_frames", meta_path, int)
            periods = _periods(entry, "fake_segments", meta_path)
            records.append(dict(
                path=f"{subset}/{file}", label=int(bool(periods)), dataset="avdeepfake1m", category=category,
                method=str(entry.get("audio_model") or ""), identity=_speaker(file), split=subset, file=file,
                fake_periods=periods, visual_fake_periods=_periods(entry, "visual_fake_segments", meta_path),
                audio_fake_periods=_periods(entry, "audio_fake_segments", meta_path), video_frames=frames,
                audio_frames=_number(entry, "audio_frames", meta_path, int), duration=frames / AVDEEPFAKE1M_FPS,
                original=str(entry["original"] or ""), style=str(entry.get("style") or "")))
    for subset, list_path in unlabelled.items():
        try:
            files = [line.strip() for line in list_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise DatasetIndexError(f"{list_path} is not a UTF-8 text list of files: {e}") from e
        listed += len(files)
        for file in files:
            present = (data_dir / subset / file).is_file()
            if not present:
                missing[subset] += 1
            # kept even when absent: a submission must cover every listed file (the scorer refuses
            # one that lacks any); decoding it fails, it is reported, and it gets no segment
            (records if present else absent).append(dict(
                path=f"{subset}/{file}", label=UNLABELLED, dataset="avdeepfake1m", category="", method="",
                identity=_speaker(file), split=subset, file=file, fake_periods=[], visual_fake_periods=[],
                audio_fake_periods=[], video_frames=UNLABELLED, audio_frames=UNLABELLED,
                duration=float(UNLABELLED), original="", style=""))
    return _localisation_frame(records, missing, listed, [*labelled.values(), *unlabelled.values()], data_dir,
                               absent=absent)


def _speaker(file: str) -> str:
    parts = PurePosixPath(file).parts
    if len(parts) < 2:
        return PurePosixPath(file).stem
    return next((p for p in parts[:-1] if re.fullmatch(r"id\d+", p)), parts[0])


# ---------------------------------------------------------------------------------- shared

def parse_periods(text) -> list[tuple[float, float]]:
    """The periods of a `*_periods` column ("[[1.2, 1.8], ...]", or the list itself) as
    [(start, end), ...] in seconds; [] for "", None or NaN (a CSV's empty cell)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    if isinstance(text, str) and not text.strip():
        return []
    value = json.loads(text) if isinstance(text, str) else text
    return [(float(start), float(end)) for start, end in value]


def _read_entries(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:      # json.JSONDecodeError is a ValueError
        raise DatasetIndexError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, list):
        raise DatasetIndexError(f"{path}: expected a JSON list of entries, found a {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DatasetIndexError(f"{path}: entry {i} is a {type(entry).__name__}, not an object")
        if not isinstance(entry.get("file"), str) or not entry["file"].strip():
            raise DatasetIndexError(f"{path}: entry {i} ({json.dumps(entry)[:120]}) is missing field(s) file")
    return data


def _require(entry: dict, fields: Iterable[str], path: Path) -> None:
    missing = [f for f in fields if f not in entry]
    if missing:
        raise DatasetIndexError(f"{path}: entry {entry['file']!r} is missing field(s) {', '.join(missing)}")


def _bad(entry: dict, field: str, path: Path, expected: str) -> DatasetIndexError:
    return DatasetIndexError(f"{path}: entry {entry['file']!r} has {field} = {json.dumps(entry[field])[:80]}, "
                             f"not {expected}")


def _periods(entry: dict, field: str, path: Path) -> list[list[float]]:
    value = entry[field]
    if value is None:
        return []
    try:
        periods = [[float(start), float(end)] for start, end in value]
    except (TypeError, ValueError):
        raise _bad(entry, field, path, "a list of [start, end] seconds") from None
    if not all(math.isfinite(t) for p in periods for t in p):
        raise _bad(entry, field, path, "a list of [start, end] seconds")
    return periods


def _flag(entry: dict, field: str, path: Path) -> bool:
    if not isinstance(entry[field], bool):
        raise _bad(entry, field, path, "true or false")
    return entry[field]


def _number(entry: dict, field: str, path: Path, kind: type):
    value = entry[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(entry, field, path, "a number")
    return kind(value)


def _stem(file: str) -> str:
    return PurePosixPath(str(file)).stem


def _localisation_frame(records: list[dict], missing: Counter, listed: int, sources: list[Path],
                        root: Path, absent: list[dict] = ()) -> pd.DataFrame:
    if not records:
        raise DatasetIndexError(f"none of the {listed} video files listed in {', '.join(str(p) for p in sources)} "
                                f"exists under {root}")
    frame = pd.DataFrame(records + list(absent))
    for col in LOCALISATION_COLUMNS:
        if col not in frame:
            frame[col] = ""
    for col in ("fake_periods", "visual_fake_periods", "audio_fake_periods"):
        frame[col] = [json.dumps(p) for p in frame[col]]
    frame = frame[LOCALISATION_COLUMNS]
    frame = frame.astype({"label": int, "video_frames": int, "audio_frames": int, "duration": float})
    frame = frame.drop_duplicates("path").sort_values("path", kind="stable").reset_index(drop=True)
    frame.attrs["missing_files"] = dict(missing)
    return frame


# ---------------------------------------------------------------------------------- submissions

def write_submission(predictions: Mapping, path: str | Path, track: str = "localisation", *,
                     files: Iterable[str] | None = None) -> None:
    """Write a 1M-Deepfakes Detection Challenge submission, atomically.

    track "localisation" (or "localization"): `predictions` maps each clip's `file` to its
    proposals [(confidence, start, end), ...] (seconds); written as the JSON object
    {file: [[confidence, start, end], ...]}, each list sorted by confidence, highest first (the
    official AR takes a clip's first N proposals as listed). track "classification":
    `predictions` maps each `file` to its fake score; written as lines `<file>;<score>`.

    Keys are the dataset's `file` (the index's `file` column), not `path`. `files`, when given,
    is what the submission must cover (e.g. the test list; the official scorers fail on a
    listed file without an entry): a localisation file without proposals is written with [],
    a classification file without a score raises ValueError, and so does a key not in `files`.
    Non-finite numbers, end < start, and a file name holding ';' or a line break raise ValueError."""
    if track not in ("localisation", "localization", "classification"):
        raise ValueError(f"track {track!r}: one of localisation, classification")
    keys = [str(k) for k in predictions]
    if files is not None:
        files = [str(f) for f in files]
        unknown = sorted(set(keys) - set(files))
        if unknown:
            raise ValueError(f"{len(unknown)} predicted file(s) are not among `files`, e.g. {unknown[:3]}")
    if track == "classification":
        if files is not None:
            scored = set(keys)
            absent = [f for f in files if f not in scored]
            if absent:
                raise ValueError(f"{len(absent)} file(s) have no score, e.g. {absent[:3]}")
        lines = []
        for file, score in predictions.items():
            file, score = str(file), float(score)
            if ";" in file or "\n" in file or "\r" in file:
                raise ValueError(f"file name {file!r} holds ';' or a line break, which the format cannot carry")
            if not math.isfinite(score):
                raise ValueError(f"{file}: score {score} is not finite")
            lines.append(f"{file};{score!r}\n")
        atomic_write_bytes(path, "".join(lines).encode())
        return
    out = {}
    for file, proposals in predictions.items():
        rows = []
        for proposal in proposals:
            try:
                confidence, start, end = (float(x) for x in proposal)
            except (TypeError, ValueError):
                raise ValueError(f"{file}: proposal {proposal!r} is not (confidence, start, end)") from None
            if not all(math.isfinite(x) for x in (confidence, start, end)) or end < start:
                raise ValueError(f"{file}: proposal {proposal!r} needs finite numbers and start <= end")
            rows.append([confidence, start, end])
        out[str(file)] = sorted(rows, key=lambda r: r[0], reverse=True)
    for file in files or ():
        out.setdefault(file, [])
    atomic_write_bytes(path, (json.dumps(out) + "\n").encode())
