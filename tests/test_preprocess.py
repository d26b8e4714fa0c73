"""Indexers, identity-disjoint splits, and the crash-safe cache, on real encoded files."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from avlib.dataio import cache
from avlib.dataio.indexers import index_dataset, read_fakeavceleb_metadata
from avlib.dataio.loader import CachedClips, make_loader
from avlib.dataio.media import write_video
from avlib.dataio.preprocess import preprocess, settings
from avlib.dataio.splits import SplitLeakError, assign_splits, audit_splits
from tests.conftest import face_frames, tone

CONFIG = settings(frames=8, size=16, fps=25, n_mfcc=40, mfcc_steps=10)


def _folder_corpus(root, n_ident=6, bad=()):
    for i in range(n_ident):
        for label in ("real", "fake"):
            write_video(root / label / f"person{i}" / f"clip {i} ({label}).mp4", face_frames(12, 32, 32, seed=i),
                        25, tone(0.5), 16000)
    for name in bad:
        (root / "fake" / "person0" / name).write_bytes(b"" if name.startswith("empty") else b"garbage" * 50)
    return root


def test_folder_corpus_with_bad_files_caches_the_rest(tmp_path):
    data = _folder_corpus(tmp_path / "data", bad=("empty.mp4", "text.mp4"))
    records = index_dataset("folder", data)
    assert len(records) == 14 and set(records["label"]) == {0, 1}
    report = preprocess(records, data, tmp_path / "cache", CONFIG, workers=2, seed=0, progress=False)
    assert report["clips_cached"] == 12 and report["clips_failed"] == 2
    failures = pd.read_csv(tmp_path / "cache" / "failures.csv")
    assert sorted(failures["path"]) == ["fake/person0/empty.mp4", "fake/person0/text.mp4"]
    assert all(failures["reason"].str.startswith("DecodeError"))
    index = cache.read_index(tmp_path / "cache")
    assert not set(failures["path"]) & set(index["path"])           # failures appear nowhere else
    ds = CachedClips(tmp_path / "cache", "all")
    video, mfcc, label = ds[0]
    assert video.dtype == torch.uint8 and video.shape == (3, 8, 16, 16)
    assert mfcc.shape == (10, 40) and label in (0, 1)


def test_rerun_processes_only_missing_clips(tmp_path):
    data = _folder_corpus(tmp_path / "data", n_ident=3)
    records = index_dataset("folder", data)
    first = preprocess(records, data, tmp_path / "cache", CONFIG, workers=1, progress=False)
    assert first["processed_this_run"] == 6
    victim = cache.read_index(tmp_path / "cache")["clip_id"][0]
    import shutil
    shutil.rmtree(tmp_path / "cache" / "clips" / victim)
    second = preprocess(records, data, tmp_path / "cache", CONFIG, workers=1, progress=False)
    assert second["processed_this_run"] == 1 and second["clips_cached"] == 6


def test_cache_refuses_other_settings(tmp_path):
    cache.open_cache(tmp_path / "c", CONFIG)
    with pytest.raises(cache.CacheError, match="frames"):
        cache.open_cache(tmp_path / "c", {**CONFIG, "frames": 9})


def test_a_killed_run_leaves_no_entry_a_reader_accepts(tmp_path):
    data = _folder_corpus(tmp_path / "data", n_ident=6)
    script = (f"import sys; sys.path.insert(0, {str(os.getcwd())!r})\n"
              "from avlib.dataio.indexers import index_dataset\nfrom avlib.dataio.preprocess import preprocess, settings\n"
              f"r = index_dataset('folder', {str(data)!r})\n"
              f"preprocess(r, {str(data)!r}, {str(tmp_path / 'cache')!r}, "
              "settings(frames=8, size=16, fps=25, n_mfcc=40, mfcc_steps=10), workers=1, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and len(list((tmp_path / "cache" / "clips").glob("*"))) < 3 if (tmp_path / "cache" / "clips").exists() else time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = cache.read_manifest(tmp_path / "cache")
    for folder in (tmp_path / "cache" / "clips").iterdir():
        if not folder.name.startswith(".tmp-"):
            cache.read_clip(tmp_path / "cache", folder.name, manifest)   # every visible entry is complete
    records = index_dataset("folder", data)
    report = preprocess(records, data, tmp_path / "cache", CONFIG, workers=1, progress=False)
    assert report["clips_cached"] == 12
    assert not list((tmp_path / "cache" / "clips").glob(".tmp-*"))


def test_reader_rejects_an_entry_of_the_wrong_shape(tmp_path):
    cache.open_cache(tmp_path / "c", CONFIG)
    cache.write_clip(tmp_path / "c", "x", np.zeros((3, 7, 16, 16), np.uint8), np.zeros((10, 40), np.float32), {})
    with pytest.raises(cache.CacheError, match="expected"):
        cache.read_clip(tmp_path / "c", "x", CONFIG)


def test_shards_split_the_work_and_merge_into_one_index(tmp_path):
    data = _folder_corpus(tmp_path / "data", n_ident=4)
    records = index_dataset("folder", data)
    a = preprocess(records, data, tmp_path / "cache", CONFIG, workers=1, shard=0, num_shards=2, progress=False)
    b = preprocess(records, data, tmp_path / "cache", CONFIG, workers=1, shard=1, num_shards=2, progress=False)
    assert a["processed_this_run"] + b["processed_this_run"] == 8
    assert 0 < a["processed_this_run"] < 8 and b["clips_cached"] == 8


def test_fakeavceleb_metadata_quirks(tmp_path):
    root = tmp_path / "FakeAVCeleb_v1.2"
    rel = "FakeVideo-RealAudio/African/men/id00001"
    write_video(root / rel / "00001_id00002_fsgan (1).mp4", face_frames(8, 32, 32), 25, tone(0.4), 16000)
    write_video(root / "RealVideo-RealAudio/African/men/id00001/00001.mp4", face_frames(8, 32, 32), 25, tone(0.4), 16000)
    lines = ["source,target1,target2,method,category,type,race,gender,path,",
             f"id00001,id00002,-,fsgan,C,FakeVideo-RealAudio,African,men,00001_id00002_fsgan (1).mp4,FakeAVCeleb/{rel}",
             f"id00001,id00002,-,fsgan,C,FakeVideo-RealAudio,African,men,00001_id00002_fsgan (1).mp4,FakeAVCeleb/{rel}",
             "id00001,-,-,real,A,RealVideo-RealAudio,African,men,00001.mp4,FakeAVCeleb/RealVideo-RealAudio/African/men/id00001",
             "id00009,-,-,real,A,RealVideo-RealAudio,Asian,women,00009.mp4,FakeAVCeleb/RealVideo-RealAudio/Asian/women/id00009"]
    (root / "meta_data.csv").write_text("\n".join(lines) + "\n")
    meta = read_fakeavceleb_metadata(root / "meta_data.csv")
    assert len(meta) == 3                                  # the repeated row is dropped
    assert meta["relpath"][0] == f"{rel}/00001_id00002_fsgan (1).mp4"
    records = index_dataset("fakeavceleb", tmp_path)
    assert len(records) == 2                               # the listed-but-absent file is skipped
    fake = records[records["label"] == 1].iloc[0]
    assert (fake["category"], fake["method"], fake["identity"], fake["race"]) == ("FVRA", "fsgan", "id00001", "African")


def test_cremad_and_casualconv_indexers(tmp_path):
    cremad = tmp_path / "cremad" / "VideoFlash"
    for name in ("1001_DFA_ANG_XX.flv", "1002_IEO_HAP_HI.flv"):
        write_video(cremad / name, face_frames(6, 32, 32), 25, tone(0.3), 16000)
    records = index_dataset("cremad", tmp_path / "cremad")
    assert list(records["identity"]) == ["1001", "1002"] and set(records["label"]) == {0}
    cc = tmp_path / "cc" / "CasualConversationsA" / "1140"
    write_video(cc / "1140_00.MP4", face_frames(6, 32, 32), 25, tone(0.3), 16000)
    (tmp_path / "cc" / "CasualConversations.json").write_text(json.dumps(
        {"1140": {"files": ["1140/1140_00.MP4"], "dark_files": [], "label": {"age": "34", "gender": "Female", "skin-type": "4"}}}))
    rec = index_dataset("casualconv", tmp_path / "cc").iloc[0]
    assert (rec["identity"], rec["age"], rec["gender"], rec["skin_type"], rec["label"]) == ("1140", "34", "Female", "4", 0)


def test_splits_are_identity_disjoint_stratified_and_seeded():
    rows = [dict(path=f"{i}-{c}", identity=f"id{i}", category=c, label=int(c != "RVRA"))
            for i in range(40) for c in ("RVRA", "RVFA", "FVRA", "FVFA")]
    records = pd.DataFrame(rows)
    a = assign_splits(records, seed=1)
    assert a.groupby("identity")["split"].nunique().max() == 1
    assert set(a["split"]) == {"train", "val", "test"}
    assert (a["split"] == "test").sum() == 6 * 4        # 15 % of 40 identities, every category
    assert a.equals(assign_splits(records, seed=1)) and not a["split"].equals(assign_splits(records, seed=2)["split"])
    leaked = a.copy()
    leaked.loc[0, "split"] = "test" if leaked.loc[0, "split"] != "test" else "train"
    with pytest.raises(SplitLeakError, match="id0"):
        audit_splits(leaked)


def test_loader_yields_uint8_batches(tmp_path):
    data = _folder_corpus(tmp_path / "data", n_ident=3)
    preprocess(index_dataset("folder", data), data, tmp_path / "cache", CONFIG, workers=1, progress=False)
    loader = make_loader(CachedClips(tmp_path / "cache", "all"), batch_size=4, train=True, workers=0)
    video, mfcc, labels = next(iter(loader))
    assert video.dtype == torch.uint8 and video.shape == (4, 3, 8, 16, 16) and mfcc.shape == (4, 10, 40)


def test_every_kind_of_odd_file_in_one_run(tmp_path):
    """The issue's list of odd inputs in one folder corpus: unreadable ones land in failures.csv
    and nowhere else, the rest are cached with the right shapes, and the run says how many failed."""
    data = tmp_path / "data"
    fake = data / "fake"
    frames = face_frames(30, 48, 48)
    readable = {
        "real/plain.mp4": dict(frames=frames, audio=tone(1.2)),
        "real/no audio.mp4": dict(frames=frames, audio=None),
        "real/ten frames.mp4": dict(frames=frames[:10], audio=tone(0.4)),
        "real/one frame.mp4": dict(frames=frames[:1], audio=tone(0.04)),
        "real/portrait (1).mp4": dict(frames=[np.full((64, 36, 3), 120, np.uint8)] * 10, audio=tone(0.4)),
        "fake/thirty fps.mp4": dict(frames=frames, audio=tone(1.0), fps=30),
        "fake/stéréo 48k.mp4": dict(frames=frames, audio=tone(1.2, 48000, channels=2), rate=48000),
        "fake/clip.flv": dict(frames=frames, audio=tone(1.2)),
        "fake/clip.avi": dict(frames=frames, audio=tone(1.2)),
        "fake/clip.webm": dict(frames=frames, audio=tone(1.2)),
    }
    for rel, spec in readable.items():
        write_video(data / rel, spec["frames"], spec.get("fps", 25), spec["audio"], spec.get("rate", 16000))
    write_video(data / "real" / "gray.mp4", [np.full((48, 48, 3), 90, np.uint8)] * 10, 25, tone(0.4), 16000, pix_fmt="gray")
    (fake / "empty.mp4").write_bytes(b"")
    (fake / "notes.mp4").write_text("not a video\n" * 10)
    whole = (data / "real" / "plain.mp4").read_bytes()
    (fake / "half.mp4").write_bytes(whole[: len(whole) // 2])
    write_video(fake / "voice only.m4a", None, 25, tone(1.0), 16000)
    (fake / "voice only.mp4").write_bytes((fake / "voice only.m4a").read_bytes())
    (fake / "voice only.m4a").unlink()
    unreadable = {"fake/empty.mp4", "fake/notes.mp4", "fake/half.mp4", "fake/voice only.mp4"}

    records = index_dataset("folder", data)
    report = preprocess(records, data, tmp_path / "cache", CONFIG, workers=2, progress=False)
    failures = pd.read_csv(tmp_path / "cache" / "failures.csv")
    assert set(failures["path"]) == unreadable
    assert report["clips_failed"] == len(unreadable) and report["clips_cached"] == len(readable) + 1
    index = cache.read_index(tmp_path / "cache")
    assert not set(index["path"]) & unreadable
    ds = CachedClips(tmp_path / "cache", "all")
    for i in range(len(ds)):
        video, mfcc, _ = ds[i]
        assert video.shape == (3, 8, 16, 16) and mfcc.shape == (10, 40) and torch.isfinite(mfcc).all()
    by_path = index.set_index("path")
    assert not by_path.loc["real/no audio.mp4", "has_audio"] and by_path.loc["real/plain.mp4", "has_audio"]
    assert by_path.loc["real/one frame.mp4", "valid_frames"] == 1
    assert report["without_audio"] == 1


def test_cached_video_round_trips_and_damage_is_refused(tmp_path):
    """The LZ4-framed video reads back bit-exact as (3, T, H, W); a file cut anywhere, or one
    whose frame header is damaged, is a CacheError naming the entry; a cache written before
    compression (video.npy) still reads."""
    cache.open_cache(tmp_path / "c", CONFIG)
    shape = (3, CONFIG["frames"], CONFIG["size"], CONFIG["size"])
    video = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    video[:, :, :8] = 7                                      # some compressible rows
    mfcc = np.ones((CONFIG["mfcc_steps"], CONFIG["n_mfcc"]), np.float32)
    cache.write_clip(tmp_path / "c", "ok", video, mfcc, {})
    got, _ = cache.read_clip(tmp_path / "c", "ok", CONFIG)
    assert got.dtype == np.uint8 and got.shape == shape and np.array_equal(got, video)
    clips = tmp_path / "c" / "clips"
    data = (clips / "ok" / cache.VIDEO_FILE).read_bytes()
    assert len(data) < video.nbytes
    damaged = {"cut-early": data[:20], "cut-late": data[:-5], "header": data[:4] + b"\xff" * 3 + data[7:], "empty": b""}
    for cid, content in damaged.items():
        cache.write_clip(tmp_path / "c", cid, video, mfcc, {})
        (clips / cid / cache.VIDEO_FILE).write_bytes(content)
        with pytest.raises(cache.CacheError, match=f"clips/{cid} is unreadable"):
            cache.read_clip(tmp_path / "c", cid, CONFIG)
    cache.write_clip(tmp_path / "c", "legacy", video, mfcc, {})
    (clips / "legacy" / cache.VIDEO_FILE).unlink()
    np.save(clips / "legacy" / cache.LEGACY_VIDEO_FILE, video)
    got, _ = cache.read_clip(tmp_path / "c", "legacy", CONFIG)
    assert np.array_equal(got, video)
