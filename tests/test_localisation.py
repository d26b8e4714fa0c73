"""Temporal localisation: partial fakes where their metadata says and nowhere else, per-frame
masks through the whole-video cache, proposals from per-frame scores, a small localiser that
learns planted segments, and the command end to end."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import imageio_ffmpeg
import nbformat
import numpy as np
import pandas as pd
import papermill
import pytest
import torch

from avlib.dataio.indexers import index_dataset
from avlib.dataio.loader import shuffled_loader
from avlib.dataio.synthetic_partial import PartialSpec, entry, generate_partial, plan_partial, render_partial
from avlib.dataio.video_cache import cache_videos, decode_whole, frame_mask, read_video_entry
from avlib.core.errors import MissingInputError, ParameterError
from avlib.dataio.decode import DecodeError
from avlib.evaluation.localise import localisation_metrics, video_verdict
from avlib.localise import check_params, corpus_spec, load_localiser, main, parameters_cell, predict_files, summary_lines
from avlib.scoring.segment_metrics import localisation_report
from avlib.models.localiser import FrameLocaliser
from avlib.scoring.segments import frame_probabilities, propose, soft_nms, stream_frame_probabilities, video_scores
from avlib.stages import plots_stage
from avlib.scoring.videos import window_starts
from avlib.training.localise import LocalisationWindows, frame_ap, train_localiser

ROOT = Path(__file__).resolve().parents[1]
TINY = PartialSpec(identities=6, seconds=4.0, size=32, styles=("studio", "webcam"), val_identities=2,
                   test_identities=2, max_segments=2, segment_seconds=(0.3, 1.0))


def _inside(segments, n, rate):
    mask = np.zeros(n, bool)
    for start, end in segments:
        mask[int(round(start * rate)):int(round(end * rate))] = True
    return mask


@pytest.mark.parametrize("kind", ["audio_modified", "visual_modified", "both_modified"])
def test_a_partial_fake_differs_from_its_real_video_inside_its_segments_only(kind):
    for row in [r for r in plan_partial(TINY) if r["modify_type"] == kind][:2]:     # one per style
        frames, audio, real_frames, real_audio = render_partial(TINY, row)
        fps = TINY.fps
        meta = entry(TINY, row)
        periods = [tuple(p) for p in meta["fake_segments"]]
        assert periods and all(0 < a < b <= TINY.seconds for a, b in periods)
        frame_in, sample_in = _inside(periods, len(frames), fps), _inside(periods, len(audio), 16000)
        changed_frames = np.array([not np.array_equal(f, r) for f, r in zip(frames, real_frames)])
        changed_samples = audio != real_audio
        assert not (changed_frames & ~frame_in).any() and not (changed_samples & ~sample_in).any()
        visual, voice = kind != "audio_modified", kind != "visual_modified"
        assert changed_frames[frame_in].mean() > 0.9 if visual else not changed_frames.any()
        assert changed_samples[sample_in].mean() > 0.9 if voice else not changed_samples.any()
        assert (meta["visual_fake_segments"] == meta["fake_segments"]) == visual
        assert (meta["audio_fake_segments"] == meta["fake_segments"]) == voice
        assert meta["original"] == f"{row['identity']}/{row['sentence']:05d}.mp4"


def test_frame_masks_and_window_starts():
    assert frame_mask([(0.2, 0.4)], 10, 10.0).tolist() == [False, False, True, True] + [False] * 6
    assert not frame_mask([], 5, 25.0).any()
    starts = window_starts(107, 50, 25)
    assert starts == [0, 25, 50, 57]                      # in frames too: the last window ends on the last frame
    assert window_starts(30, 50, 25) == [0]


def test_proposals_find_a_planted_bump_and_soft_nms_demotes_its_duplicates():
    fps = 25.0
    p = np.full(200, 0.05)
    p[50:75] = 0.9                         # 2.0-3.0 s
    p[150:160] = 0.6                       # 6.0-6.4 s, weaker
    rows = propose(p, fps)
    assert rows[0, 1:].tolist() == [2.0, 3.0]
    assert any(np.allclose(r[1:], [6.0, 6.4]) for r in rows[:3])
    assert (np.diff(rows[:, 0]) <= 1e-12).all()            # ranked by confidence
    report = localisation_report({"v": rows}, {"v": np.array([[2.0, 3.0], [6.0, 6.4]])}, "avdeepfake1m")
    assert report["ar@5"] == 1.0
    dup = soft_nms(np.array([[0.9, 0.0, 1.0], [0.85, 0.0, 1.0], [0.5, 3.0, 4.0]]))
    assert dup[1, 1:].tolist() == [3.0, 4.0] and dup[2, 0] < 0.85 * 0.1     # the duplicate falls behind
    scores = video_scores(p, fps)
    assert scores["max"] > 0.85 and scores["mean"] < 0.3


def test_boundary_alternatives_recover_an_end_two_frames_off_without_outranking_any_primary():
    fps = 25.0
    p = np.full(100, 0.05)
    p[20:46] = 0.9                         # the curve says 0.80-1.84 s; the truth ends two frames earlier
    truth = {"v": np.array([[0.8, 1.76]])}
    bare, rows = propose(p, fps, boundary_shift=0), propose(p, fps)
    assert len(rows) > len(bare) and np.array_equal(rows[:len(bare)], bare)     # primaries first, unchanged
    assert rows[len(bare):, 0].max() < bare[:, 0].min()
    assert len({(round(s * fps), round(e * fps)) for _, s, e in rows}) == len(rows)          # no duplicate
    assert localisation_report({"v": bare}, truth, "avdeepfake1m")["ar@50"] < 0.95
    assert localisation_report({"v": rows}, truth, "avdeepfake1m")["ar@50"] == 1.0
    assert propose(p, fps, max_proposals=5).shape == (5, 3)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial") / "data"
    generate_partial(root, TINY, workers=2, progress=False)
    return root


def test_the_generated_corpus_is_read_by_the_avdeepfake1m_indexer_and_cached_with_its_masks(tiny_corpus, tmp_path):
    records = index_dataset("avdeepfake1m", tiny_corpus)
    assert len(records) == 5 * TINY.identities
    assert set(records["split"]) == {"train", "val", "test"}
    assert records.groupby("identity")["split"].nunique().max() == 1          # identity-disjoint
    broken = tiny_corpus / "test" / "broken.mp4"
    broken.write_bytes(b"not a video")
    extra = pd.DataFrame([{**records.iloc[0].to_dict(), "path": "test/broken.mp4", "file": "broken.mp4"}])
    index, failures = cache_videos(pd.concat([records, extra]), tiny_corpus, tmp_path / "cache", fps=25.0, size=32,
                                   progress=False, workers=2)
    serial, _ = cache_videos(pd.concat([records, extra]), tiny_corpus, tmp_path / "serial", fps=25.0, size=32,
                             progress=False, workers=1)
    broken.unlink()
    assert len(index) == len(records) and failures["path"].tolist() == ["test/broken.mp4"]
    pd.testing.assert_frame_equal(index, serial)                 # worker processes change nothing, not even the order
    for cid in index["clip_id"][::7]:
        a, b = read_video_entry(tmp_path / "cache", cid), read_video_entry(tmp_path / "serial", cid)
        assert all(np.array_equal(a[k], b[k]) for k in ("video", "audio", "mask"))
    # training windows are read from the cache when drawn, the same in loader workers as without
    windows = LocalisationWindows(tmp_path / "cache", index[index["split"] == "train"], frames=32, fps=25.0,
                                  sample_rate=16000, windows_per_video=2, seed=3)
    windows.set_epoch(1)
    first = []
    for n in (0, 2):
        batches = iter(shuffled_loader(windows, batch_size=4, seed=3, workers=n))
        first.append(next(batches))
        del batches                                   # its worker processes end here
    assert all(torch.equal(x, y) for x, y in zip(*first)) and first[0][2].shape == (4, 32, 2)
    assert failures["reason"].iloc[0].startswith("DecodeError") and failures["file"].iloc[0] == "broken.mp4"
    originals = index.set_index("file")
    for r in index[index["category"] != "real"].to_dict("records"):
        fake = read_video_entry(tmp_path / "cache", r["clip_id"])
        real = read_video_entry(tmp_path / "cache", originals.loc[r["original"], "clip_id"])
        want = frame_mask([tuple(x) for x in json.loads(r["fake_periods"])], len(fake["mask"]), 25.0)
        assert want.any() and (fake["mask"].any(1) == want).all()
        diff = np.abs(fake["video"].astype(int) - real["video"].astype(int)).mean(axis=(1, 2, 3))
        if r["category"] == "audio_modified":
            assert not diff.any()
            continue
        # the decoded frames part from the original's where the mask begins: identical before it (but
        # for up to 3 B-frames that H.264 predicts from the changed ones), different inside it (and
        # after it too: later frames are predicted from the changed ones)
        first = int(np.flatnonzero(want)[0])
        assert not diff[:max(0, first - 3)].any() and diff[want].min() > 0, (r["file"], first, diff.round(1))
    # a relabelled video is decoded again, never reused with its old mask
    changed = records.copy()
    row = changed.index[changed["category"] == "visual_modified"][0]
    changed.loc[row, "visual_fake_periods"] = changed.loc[row, "fake_periods"] = "[[0.0, 1.0]]"
    again, _ = cache_videos(changed, tiny_corpus, tmp_path / "cache", fps=25.0, size=32, progress=False)
    mask = read_video_entry(tmp_path / "cache", again.loc[row, "clip_id"])["mask"]
    assert mask[:25, 0].all() and not mask[25:, 0].any()


@pytest.mark.parametrize("frames", [32, 128])           # windows shorter than the 4 s video, and longer
def test_streamed_scores_of_a_file_equal_those_of_its_whole_decode(tiny_corpus, frames):
    torch.manual_seed(0)
    model = FrameLocaliser(fps=25.0, frames=frames).eval()
    path = sorted((tiny_corpus / "test").rglob("*.mp4"))[0]
    video, audio = decode_whole(path, fps=25.0, size=32, sample_rate=16000)
    whole = frame_probabilities(model, video, audio, batch_size=3)
    streamed, duration = stream_frame_probabilities(model, path, size=32, batch_size=2)
    assert streamed.shape == whole.shape == (100, 2) and duration == pytest.approx(4.0, abs=0.05)
    # a window longer than the file also holds the audio track's last encoder padding, where the
    # whole decode stops at the video's end and pads with zeros: 2e-5 apart there
    np.testing.assert_allclose(streamed, whole, atol=1e-5 if frames < 100 else 1e-4)


def test_streamed_scores_stop_at_the_last_frame_and_a_file_without_frames_is_an_error(tiny_corpus, tmp_path):
    torch.manual_seed(0)
    model = FrameLocaliser(fps=25.0, frames=32).eval()
    # a container longer than its video (2 s of frames, 6 s of sound): no window past the last frame
    long_audio = tmp_path / "long_audio.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x64:rate=25:duration=2", "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000:duration=6",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(long_audio)], check=True)
    p, duration = stream_frame_probabilities(model, long_audio, size=32)
    assert duration > 5.5 and p.shape == (50, 2) and (p > 0).all()
    # every video packet zeroed: the header opens, no frame decodes
    data = bytearray((sorted((tiny_corpus / "test").rglob("*.mp4"))[0]).read_bytes())
    start, moov = data.find(b"mdat") + 4, data.find(b"moov")
    end = moov - 4 if moov > start else len(data)
    data[start:end] = bytes(end - start)
    blank = tmp_path / "blank.mp4"
    blank.write_bytes(bytes(data))
    with pytest.raises(DecodeError, match="no decodable video frame"):
        stream_frame_probabilities(model, blank, size=32)
    out = predict_files(model, [blank, long_audio], size=32, log=lambda line: None)
    assert "no decodable video frame" in out[str(blank)]["error"] and "segments" in out[str(long_audio)]


def test_a_small_localiser_recovers_planted_segments_better_than_chance(tiny_corpus, tmp_path):
    torch.set_num_threads(2)
    index, _ = cache_videos(index_dataset("avdeepfake1m", tiny_corpus), tiny_corpus, tmp_path / "cache", fps=25.0,
                            size=32, progress=False)
    model, history = train_localiser(tmp_path / "cache", index, frames=32, fps=25.0, epochs=12, batch_size=8,
                                     lr=3e-3, seed=0, windows_per_video=8, log=lambda line: None)
    test = index[index["split"] == "test"]
    fake_share = np.mean([read_video_entry(tmp_path / "cache", c)["mask"].any(1).mean() for c in test["clip_id"]])
    ap = frame_ap(model, tmp_path / "cache", test)
    assert ap > fake_share + 0.25, (ap, fake_share, history.to_dict("records"))


def test_check_params_names_the_bad_parameter():
    with pytest.raises(ParameterError, match="size"):
        check_params({"size": 8})
    with pytest.raises(ParameterError, match="epoch_count"):
        check_params({"epoch_count": 3})
    with pytest.raises(ParameterError, match="seconds"):
        corpus_spec(check_params({"seconds": 3.0}))


def test_the_notebook_s_parameters_cell_is_the_declaration():
    nb = nbformat.read(ROOT / "notebooks" / "localise.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1 and cells[0].source == parameters_cell()
    assert all(not c.outputs for c in nb.cells if c.cell_type == "code")


def test_the_notebook_runs_the_chain_and_the_command_predicts_segments_of_files(tmp_path):
    params = dict(run_name="tiny", results_dir=str(tmp_path / "results"), data_dir=str(tmp_path / "data" / "partial"),
                  cache_dir=str(tmp_path / "cache"), identities=4, seconds=5.0, corpus_styles="studio",
                  val_identities=1, test_identities=1, heldout_styles="outdoor", heldout_identities=1, size=32,
                  frames=32, epochs=1, windows_per_video=1, ablation=True)
    corpus = generate_partial(params["data_dir"], corpus_spec(check_params(params)), progress=False)
    (corpus / "testA").mkdir()           # a hidden-label subset, as AV-Deepfake1M++ ships testA
    shutil.copy(next((corpus / "test").rglob("*.mp4")), corpus / "testA" / "000001.mp4")
    (corpus / "testA_files.txt").write_text("000001.mp4\nmissing.mp4\n")
    # through the notebook, as a person runs it (papermill, kernel in notebooks/)
    executed = tmp_path / "localise.ipynb"
    papermill.execute_notebook(str(ROOT / "notebooks" / "localise.ipynb"), str(executed), parameters=params,
                               cwd=str(ROOT / "notebooks"), progress_bar=False)
    run_dir = tmp_path / "results" / "tiny"
    outputs = [o for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code" for o in c.outputs]
    assert sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs) == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    sets = metrics["localisation"]
    assert set(sets) == {"sync_evidence", "no_sync_evidence"} and set(sets["sync_evidence"]) == {"main", "heldout"}
    in_domain = sets["sync_evidence"]["main"]
    assert set(in_domain["avdeepfake1m"]) >= {"ap@0.5", "ap@0.75", "ap@0.9", "ap@0.95", "ar@50", "score"}
    assert set(in_domain["video_verdict"]) == {"peak", "mean_of_frames"}
    assert set(in_domain["by_modify_type"]) == {"audio_modified", "visual_modified", "both_modified"}
    hidden = json.loads((run_dir / "segments_main_unlabelled_testA.json").read_text())
    assert len(hidden["000001.mp4"]) > 0                       # scored, never measured
    assert hidden["missing.mp4"] == []          # listed but absent: reported, and in the submission without segments
    assert json.loads((run_dir / "metrics.json").read_text())["not_decoded"]["main"] == {"unlabelled_testA": 1}
    segments = json.loads((run_dir / "segments_main.json").read_text())
    assert len(segments) == 5 and all(all(len(p) == 3 for p in v) for v in segments.values())
    comparison = pd.read_csv(run_dir / "comparison.csv")
    assert comparison["set"].str.startswith("published").sum() == 3
    for name in ("localisation_ap_iou.png", "localisation_timelines_main.png", "localisation_timelines_heldout.png"):
        assert (run_dir / "figures" / name).stat().st_size > 1000
    (run_dir / "seeds.csv").write_text("set,variant,metric,mean,sd,ci95_low,ci95_high\nmain,old,ap@0.5,0.1,0,0,0\n")
    assert "main (sync_evidence): AP@0.5" in summary_lines(run_dir)[1]      # this run's figures, not an old summary
    # 05_plots draws them again from the run's files, without the model
    timeline_numbers = pd.read_csv(run_dir / "figures" / "localisation_timelines_main.csv")
    shutil.rmtree(run_dir / "figures")
    drawn = plots_stage(run_name="tiny", results_dir=str(tmp_path / "results"))
    assert sorted(p.name for p in drawn) == ["localisation_ap_iou.png", "localisation_timelines_heldout.png",
                                             "localisation_timelines_main.png"]
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "figures" / "localisation_timelines_main.csv"), timeline_numbers)
    (run_dir / "frames_heldout.npz").unlink()
    with pytest.raises(MissingInputError, match="frames_heldout.npz"):
        plots_stage(run_name="tiny", results_dir=str(tmp_path / "results"))
    model = load_localiser(run_dir / "localiser.pt")
    videos = sorted((tmp_path / "data" / "partial" / "test").rglob("*.mp4"))[:2]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    scored = {}
    out = predict_files(model, videos + [broken], size=32, log=lambda line: None, scored=scored, threshold=0.5)
    assert "error" in out[str(broken)] and set(scored["frames"]) == {str(v) for v in videos}
    for v in videos:
        assert out[str(v)]["verdict"] in ("FAKE", "REAL") and 0 <= out[str(v)]["video_score"] <= 1 and out[str(v)]["duration"] == pytest.approx(5.0, abs=0.1)
        assert all(s["modality"] in ("visual", "audio", "both") for s in out[str(v)]["segments"])
    code = main(["--checkpoint", str(run_dir / "localiser.pt"), str(videos[0]), "--out", str(tmp_path / "s.json"),
                 "--figure", str(tmp_path / "timeline.png")])
    assert code == 0 and (tmp_path / "timeline.png").stat().st_size > 1000
    assert json.loads((tmp_path / "s.json").read_text())[str(videos[0])]["segments"] is not None
    # a folder in shards, and a killed run resumed: the same results as one run
    folder = [str(v) for v in sorted((tmp_path / "data" / "partial" / "test").rglob("*.mp4"))[:4]]
    base = ["--checkpoint", str(run_dir / "localiser.pt"), *folder]
    assert main(base + ["--out", str(tmp_path / "all.json")]) == 0
    whole = json.loads((tmp_path / "all.json").read_text())
    for k in (0, 1):
        assert main(base + ["--shard", f"{k}/2", "--out", str(tmp_path / f"part{k}.json")]) == 0
    parts = [json.loads((tmp_path / f"part{k}.json").read_text()) for k in (0, 1)]
    assert not set(parts[0]) & set(parts[1]) and {**parts[0], **parts[1]} == whole
    marked = {**whole[folder[0]], "video_score": -1.0}          # finished before the kill: kept, not redone
    (tmp_path / "again.partial.jsonl").write_text(json.dumps([folder[0], marked]) + "\n" + '["' + folder[1][:10])
    assert main(base + ["--resume", "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again == {**whole, folder[0]: marked} and not (tmp_path / "again.partial.jsonl").exists()


def test_localisation_metrics_of_a_perfect_prediction_reach_the_official_ceiling():
    index = pd.DataFrame([
        {"file": "r.mp4", "label": 0, "category": "real", "fake_periods": "[]"},
        {"file": "a.mp4", "label": 1, "category": "audio_modified", "fake_periods": "[[1.0, 1.5], [3.0, 4.0]]"},
        {"file": "v.mp4", "label": 1, "category": "visual_modified", "fake_periods": "[[2.0, 2.4]]"}])
    scored = {"proposals": {"r.mp4": np.zeros((0, 3)), "a.mp4": np.array([[0.9, 1.0, 1.5], [0.8, 3.0, 4.0]]),
                            "v.mp4": np.array([[0.7, 2.0, 2.4]])},
              "modality": {"r.mp4": [], "a.mp4": ["audio", "audio"], "v.mp4": ["audio"]},
              "videos": pd.DataFrame({"file": ["r.mp4", "a.mp4", "v.mp4"], "label": [0, 1, 1],
                                      "max": [0.1, 0.9, 0.7], "mean": [0.1, 0.3, 0.05]})}
    report = localisation_metrics(index, scored)
    assert report["fake_segments"] == 3 and report["ap_ceiling"] == pytest.approx(2 / 3)
    assert report["avdeepfake1m"]["ap@0.95"] == pytest.approx(2 / 3) and report["avdeepfake1m"]["ar@5"] == 1.0
    assert report["by_modify_type"]["audio_modified"]["ap@0.5"] == pytest.approx(0.5)      # 2 segments: 1 - 1/2
    assert report["video_level"]["auc_peak"] == 1.0 and report["video_level"]["auc_mean_of_frames"] == 0.5
    assert report["modality"]["audio_modified"] == 1.0 and report["modality"]["visual_modified"] == 0.0


def test_the_video_verdict_takes_its_thresholds_from_validation_videos():
    val = pd.DataFrame({"label": [0, 0, 1, 1], "max": [0.2, 0.3, 0.8, 0.9], "mean": [0.1, 0.2, 0.15, 0.3]})
    test = pd.DataFrame({"label": [0, 1, 1], "max": [0.25, 0.95, 0.4], "mean": [0.05, 0.5, 0.5]})
    verdict = video_verdict(val, test)
    assert 0.3 < verdict["peak"]["threshold"] < 0.8            # between the val classes, wherever the rule puts it
    assert verdict["peak"]["real_called_fake"] == 0.0 and verdict["peak"]["fake_called_fake"] == 0.5
    assert verdict["peak"]["balanced_accuracy"] == 0.75
    assert verdict["mean_of_frames"]["real_called_fake"] == 0.0 and verdict["mean_of_frames"]["fake_called_fake"] == 1.0
