"""Dataset indexers: one record per clip, as a pandas DataFrame with the columns in COLUMNS
(and `style`, the generator style, for the synthetic corpus).

`path` is relative to the dataset's data_dir; label 0 = REAL, 1 = FAKE.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from avlib.dataio.localisation_sets import index_avdeepfake1m, index_lavdf
from avlib.dataio.records import COLUMNS, DatasetIndexError

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".m4v", ".mpg", ".mpeg", ".wmv", ".3gp", ".ts"}
FAKEAVCELEB_CATEGORIES = {  # folder -> (short category, label, letter used in meta_data.csv)
    "RealVideo-RealAudio": ("RVRA", 0, "A"),
    "RealVideo-FakeAudio": ("RVFA", 1, "B"),
    "FakeVideo-RealAudio": ("FVRA", 1, "C"),
    "FakeVideo-FakeAudio": ("FVFA", 1, "D"),
}


def index_dataset(dataset: str, data_dir: str | Path) -> pd.DataFrame:
    """Index `data_dir` as `dataset` (fakeavceleb, synthetic, cremad, casualconv, folder, lavdf,
    avdeepfake1m: the last two in avlib.dataio.localisation_sets)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetIndexError(f"parameter `data_dir`: {data_dir} is not a folder")
    indexers = {"fakeavceleb": index_fakeavceleb, "synthetic": index_fakeavceleb,
                "cremad": index_cremad, "casualconv": index_casualconv, "folder": index_folder,
                "lavdf": index_lavdf, "avdeepfake1m": index_avdeepfake1m}
    if dataset not in indexers:
        raise DatasetIndexError(f"no indexer for dataset {dataset!r}; one of {', '.join(indexers)}")
    frame = indexers[dataset](data_dir)
    if dataset == "synthetic":
        frame["dataset"] = "synthetic"
        frame["style"] = synthetic_styles(frame, data_dir)
    if frame.empty:
        raise DatasetIndexError(f"no {dataset} video files found under {data_dir}")
    return frame


def _frame(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(records)
    for col in COLUMNS:
        if col not in frame:
            frame[col] = ""
    frame = frame[COLUMNS].fillna("")
    frame["label"] = frame["label"].astype(int)
    return frame.drop_duplicates("path").sort_values("path", kind="stable").reset_index(drop=True)


def _videos(root: Path):
    return (p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
            and not p.name.startswith("."))


def fakeavceleb_root(data_dir: Path) -> Path:
    """data_dir itself or data_dir/FakeAVCeleb_v1.2 (whichever holds the category folders)."""
    for cand in (data_dir, data_dir / "FakeAVCeleb_v1.2", data_dir / "FakeAVCeleb"):
        if any((cand / c).is_dir() for c in FAKEAVCELEB_CATEGORIES):
            return cand
    raise DatasetIndexError(f"{data_dir} holds none of the FakeAVCeleb folders {', '.join(FAKEAVCELEB_CATEGORIES)}")


def read_fakeavceleb_metadata(csv_path: Path) -> pd.DataFrame:
    """meta_data.csv with its quirks handled: the trailing comma's unnamed tenth column holds
    the directory (written FakeAVCeleb/..., not FakeAVCeleb_v1.2/...), `path` only the file
    name; repeated rows dropped. Returns columns source, target1, target2, method, category,
    type, race, gender, relpath."""
    meta = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    meta.columns = [c.strip() for c in meta.columns]
    unnamed = [c for c in meta.columns if c.startswith("Unnamed") or c == ""]
    if "path" not in meta or not unnamed:
        raise DatasetIndexError(f"{csv_path}: expected FakeAVCeleb's header 'source,...,path,' with a trailing "
                          f"directory column; got {list(meta.columns)}")
    directory = meta[unnamed[0]].str.strip().str.replace("\\", "/", regex=False)
    directory = directory.str.replace(r"^(\./)?FakeAVCeleb(_v1\.2)?/", "", regex=True)
    meta["relpath"] = directory.str.rstrip("/") + "/" + meta["path"].str.strip()
    return meta.drop(columns=unnamed).drop_duplicates("relpath").reset_index(drop=True)


def index_fakeavceleb(data_dir: Path) -> pd.DataFrame:
    """Folder scan reconciled with meta_data.csv (method, race, gender from the CSV when the
    file is listed; otherwise from the folder names). Files listed but absent are skipped."""
    root = fakeavceleb_root(data_dir)
    meta = None
    if (root / "meta_data.csv").is_file():
        meta = read_fakeavceleb_metadata(root / "meta_data.csv").set_index("relpath")
    records = []
    for path in _videos(root):
        rel = path.relative_to(root)
        parts = rel.parts
        if parts[0] not in FAKEAVCELEB_CATEGORIES:
            continue
        category, label, _ = FAKEAVCELEB_CATEGORIES[parts[0]]
        ident = next((p for p in parts if re.fullmatch(r"id\d+", p)), path.parent.name)
        race = parts[1] if len(parts) > 3 else ""
        gender = parts[2] if len(parts) > 3 else ""
        method = {"RVRA": "real", "RVFA": "rtvc"}.get(category, "unknown")
        if meta is not None and rel.as_posix() in meta.index:
            row = meta.loc[rel.as_posix()]
            method, race, gender = row["method"] or method, row["race"] or race, row["gender"] or gender
            ident = row["source"] or ident
        records.append(dict(path=path.relative_to(data_dir).as_posix(), label=label, dataset="fakeavceleb",
                            category=category, method=method, identity=ident, race=race, gender=gender))
    return _frame(records)


def synthetic_styles(frame: pd.DataFrame, data_dir: Path) -> list[str]:
    """The generator style of each clip of a synthetic corpus, from the styles.csv that
    avlib.dataio.synthetic writes beside meta_data.csv ("" for a clip it does not list)."""
    root = fakeavceleb_root(data_dir)
    listed = {}
    if (root / "styles.csv").is_file():
        table = pd.read_csv(root / "styles.csv", dtype=str, keep_default_na=False)
        prefix = root.relative_to(data_dir)
        listed = {(prefix / p).as_posix(): s for p, s in zip(table["path"], table["style"])}
    return [listed.get(p, "") for p in frame["path"]]


def index_cremad(data_dir: Path) -> pd.DataFrame:
    """CREMA-D: VideoFlash/*.flv named ActorID_Sentence_Emotion_Level; all real; actor = identity."""
    root = data_dir / "VideoFlash" if (data_dir / "VideoFlash").is_dir() else data_dir
    records = []
    for path in _videos(root):
        m = re.match(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})", path.stem)
        if not m:
            continue
        records.append(dict(path=path.relative_to(data_dir).as_posix(), label=0, dataset="cremad",
                            category="real", method=f"{m.group(3)}", identity=m.group(1)))
    return _frame(records)


def index_casualconv(data_dir: Path) -> pd.DataFrame:
    """Casual Conversations: CasualConversations*/<subject>/<subject>_NN.MP4, all real; subject
    = identity; age, gender and skin type joined from CasualConversations.json when present."""
    labels = {}
    for ann in data_dir.rglob("CasualConversations*.json"):
        with open(ann, encoding="utf-8") as f:
            for subject, entry in json.load(f).items():
                labels[str(subject)] = (entry or {}).get("label", {})
    records = []
    for path in _videos(data_dir):
        subject = path.parent.name
        lab = labels.get(subject, {})
        records.append(dict(path=path.relative_to(data_dir).as_posix(), label=0, dataset="casualconv",
                            category="real", method="real", identity=subject,
                            age=str(lab.get("age", "")), gender=str(lab.get("gender", "")),
                            skin_type=str(lab.get("skin-type", lab.get("skin_type", "")))))
    return _frame(records)


def index_folder(data_dir: Path) -> pd.DataFrame:
    """Any tree with real/ and fake/ sub-folders. Identity = the first folder below real/ or
    fake/ when clips are grouped that way, else the file name (each clip its own identity)."""
    if not (data_dir / "real").is_dir() and not (data_dir / "fake").is_dir():
        raise DatasetIndexError(f"{data_dir} has neither a real/ nor a fake/ sub-folder")
    records = []
    for label, sub in ((0, "real"), (1, "fake")):
        if not (data_dir / sub).is_dir():
            continue
        for path in _videos(data_dir / sub):
            rel = path.relative_to(data_dir / sub)
            ident = rel.parts[0] if len(rel.parts) > 1 else path.stem
            records.append(dict(path=path.relative_to(data_dir).as_posix(), label=label, dataset="folder",
                                category=sub, method=sub, identity=ident))
    return _frame(records)
