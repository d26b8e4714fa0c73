"""The sync branch: offsets it can search, the real-only objective recovering known shifts on
synthetic talking faces, and sync models going through the same paths as concat ones."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from avlib import stages
from avlib.core.params import ParameterError
from avlib.dataio.cache import CacheError
from avlib.dataio.loader import CachedClips, make_loader
from avlib.dataio.preprocess import settings, write_dummy_cache
from avlib.models.detector import build_model, count_parameters, inference_model, model_config
from avlib.models.sync import SyncBranch, check_sync_window, sync_loss, sync_offsets
from avlib.scoring.forward import predict
from avlib.training.loop import fit

SYNC_CONFIG = settings(frames=16, size=16, fps=10.0, n_mfcc=40, mfcc_steps=8)   # k = 6 offsets each side


def test_offsets_cover_about_0_6_s_at_any_frame_rate_and_low_fps_is_refused():
    assert sync_offsets(25.0) == 15 and sync_offsets(12.5) == 8 and sync_offsets(16.0) == 10
    with pytest.raises(ParameterError, match="`fps`"):
        sync_offsets(4.0)
    with pytest.raises(ParameterError, match="`frames`"):
        check_sync_window(20, 25.0)           # needs more than 2 x 15 frames
    with pytest.raises(ParameterError, match="`fps`"):
        build_model(fusion="sync", fps=4.0, frames=8)


def test_the_default_model_is_the_seeds_and_sync_adds_a_branch():
    concat = build_model()
    assert count_parameters(concat) == 31_946_527
    assert model_config(concat)["fusion"] == "concat" and not hasattr(concat, "sync")
    sync = build_model(fusion="sync", fps=16.0, frames=32, trunk_stride=4)
    assert count_parameters(sync) - count_parameters(sync.sync) - count_parameters(sync.sync_norm) \
        - 6 * 256 - (6 * 2 + 2) == 31_946_527      # classifier's first layer sees 6 more inputs; the sync head
    logits, out = sync(torch.rand(2, 3, 32, 32, 32), torch.randn(2, 50, 40), 0.1 * torch.randn(2, 32000),
                       with_sync=True)
    assert logits.shape == (2, 2) and out["log_p"].shape == (2, 32, 21) and out["features"].shape == (2, 6)
    assert torch.isinf(out["logits"][:, 0, 0]).all() and torch.isfinite(out["logits"][:, 10, :]).all()   # masked edges
    one = sync.train()(torch.rand(1, 3, 32, 32, 32), torch.randn(1, 50, 40), 0.1 * torch.randn(1, 32000))
    assert one.shape == (1, 2) and torch.isfinite(one).all()        # a last training batch of one clip
    with pytest.raises(ValueError, match="waveform"):
        sync(torch.rand(2, 3, 32, 32, 32), torch.randn(2, 50, 40))


def test_loss_counts_only_real_clips():
    log_p = torch.log_softmax(torch.randn(3, 5, 7), -1)
    labels = torch.tensor([0, 1, 0])
    expected = -(log_p[[0, 2], :, 3].mean(1)).mean()
    assert sync_loss(log_p, labels) == pytest.approx(float(expected))
    assert float(sync_loss(log_p, torch.tensor([1, 1, 1]))) == 0.0


def _talking_faces(n, first, fps, frames, delays=None, size=32):
    """Real clips of the synthetic corpus's renderer and voice (no encoding), audio delayed by
    `delays` frames (positive: the audio lags)."""
    import cv2

    from avlib.dataio import synthetic as S

    spec = S.CorpusSpec(identities=400, seconds=frames / fps + 0.6, fps=fps, size=64, seed=0)
    spf = int(round(16000 / fps))
    videos, waves = [], []
    for j in range(n):
        i, delay = first + j, (delays[j] if delays else 0)
        traits = S.identity_traits(spec, f"id{10000 + i:05d}")
        rng = np.random.default_rng([0, i])
        sylls = S.syllables(rng, spec.seconds, traits["rate"])
        audio = S.speak(rng, sylls, spec.seconds, traits["f0"], traits["formant_shift"])
        faces = S.render_face(traits, S.envelope(sylls, frames, fps), 64, fps, np.random.default_rng([0, i, 9]))[0]
        videos.append(np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in faces]))
        audio = np.concatenate([np.zeros(delay * spf, np.float32), audio]) if delay >= 0 else audio[-delay * spf:]
        waves.append(audio[:frames * spf])
    video = torch.from_numpy(np.stack(videos)).permute(0, 4, 1, 2, 3).float() / 255
    return video, torch.from_numpy(np.stack(waves))


@pytest.mark.slow
def test_real_only_objective_recovers_known_shifts():
    """Trained on in-sync real clips only, the offset it estimates on held-out identities whose
    audio is delayed by -3..3 frames is the true one for at least 90 % of them."""
    torch.manual_seed(0)
    fps, frames = 12.5, 24
    video, wave = _talking_faces(48, 0, fps, frames)
    delays = [(j % 7) - 3 for j in range(21)]
    test_video, test_wave = _talking_faces(21, 200, fps, frames, delays)
    branch = SyncBranch(fps=fps, frames=frames)
    optimizer = torch.optim.Adam(branch.parameters(), 2e-3)
    for _ in range(4):             # seeds 0-3 reached >= 95 % after 3 epochs (0-52 % after 2)
        branch.train()
        for idx in torch.randperm(48).split(16):
            loss = sync_loss(branch(video[idx], wave[idx])["log_p"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    branch.eval()
    with torch.no_grad():
        found = branch(test_video, test_wave)["offset"].numpy()
    assert np.mean(found == np.array(delays)) >= 0.9, list(zip(found, delays))
    # an untrained sync model's head already reads that branch as the sync score: out of sync -> fake
    model = build_model(fusion="sync", fps=fps, frames=frames, trunk_stride=4)
    model.sync = branch
    with torch.no_grad():
        fake_margin = model.eval().sync_head(model.sync_norm(branch(test_video, test_wave)["features"])) @ torch.tensor([-1.0, 1.0])
    far = np.abs(delays) >= 2
    keep = far | (np.array(delays) == 0)
    assert roc_auc_score(far[keep], fake_margin.numpy()[keep]) >= 0.9


@pytest.fixture
def sync_cache(tmp_path):
    write_dummy_cache(tmp_path / "cache", SYNC_CONFIG, n=16, seed=0)
    return tmp_path / "cache"


def _fit_sync(cache, run, epochs, log=lambda *a: None, **kw):
    torch.manual_seed(0)
    model = build_model(fusion="sync", fps=10.0, frames=16, trunk_stride=4, video_encoder="framediff")
    train = make_loader(CachedClips(cache, "train", waveform=True), batch_size=4, train=True, seed=0)
    val = make_loader(CachedClips(cache, "val", waveform=True), batch_size=4, train=False)
    history = fit(model, train, val, run_dir=run, epochs=epochs, lr=1e-3, device=torch.device("cpu"), seed=0,
                  progress=False, log=log, sync_weight=1.0, keep_last=0, **kw)
    return model, history, val


def test_sync_model_resumes_and_scores_like_its_inference_copy(sync_cache, tmp_path):
    """(Exact resumption is tested on the concat model in test_train.py: the same code path,
    the sync branch adds only parameters and buffers to the state it saves.)"""
    first, _, _ = _fit_sync(sync_cache, tmp_path / "b", 1)
    after_one = {k: v.clone() for k, v in first.state_dict().items()}
    lines = []
    resumed, history, val = _fit_sync(sync_cache, tmp_path / "b", 2, log=lines.append)
    assert list(history["epoch"]) == [1, 2] and any("resumed from epoch 1" in line for line in lines)
    assert not torch.equal(resumed.sync.logit_scale, after_one["sync.logit_scale"])     # epoch 2 trained it further
    assert {"val_sync_loss", "val_offset_accuracy", "val_sync_auc"} <= set(history.columns)
    plain = predict(resumed, val, torch.device("cpu"), sync=True)
    fast = predict(inference_model(resumed), val, torch.device("cpu"), sync=True)
    assert np.allclose(plain["probs"], fast["probs"], atol=1e-5)
    assert np.allclose(plain["sync_score"], fast["sync_score"], atol=1e-4)
    assert len(plain["sync_offset"]) == len(val.dataset)


def test_stages_build_a_sync_model_and_refuse_what_cannot_work(tmp_path):
    common = dict(results_dir=str(tmp_path / "results"), data_dir="", n_mfcc=40, mfcc_steps=8, limit=16,
                  progress=False)
    stages.preprocess_stage(run_name="low", dataset="dummy", cache_dir=str(tmp_path / "low"), frames=8, size=16,
                            fps=4.0, **common)
    with pytest.raises(ParameterError, match="`fps`"):
        stages.build_model_stage(run_name="low", results_dir=common["results_dir"], fusion="sync")
    stages.preprocess_stage(run_name="ok", dataset="dummy", cache_dir=str(tmp_path / "ok"), frames=16, size=16,
                            fps=10.0, **common)
    model, summary = stages.build_model_stage(run_name="ok", results_dir=common["results_dir"], fusion="sync",
                                              trunk_stride=4)
    assert summary["fusion"] == "sync" and summary["sync_offsets"] == 6 and summary["parameters_by_part"]["sync"] > 0
    # a cache made before waveforms were kept: the manifest says so, and the message names 01_preprocess
    manifest = tmp_path / "ok" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"waveform": true', '"waveform": false'))
    with pytest.raises(stages.MissingInputError, match="01_preprocess"):
        stages.build_model_stage(run_name="ok", results_dir=common["results_dir"], fusion="sync")
    with pytest.raises(CacheError, match="01_preprocess"):
        CachedClips(tmp_path / "ok", "train", waveform=True)


def test_sync_pretraining_uses_real_clips_only_and_initialises_a_later_model(sync_cache, tmp_path):
    common = dict(results_dir=str(tmp_path / "results"))
    stages.preprocess_stage(run_name="pre", dataset="dummy", data_dir="", cache_dir=str(sync_cache), frames=16,
                            size=16, fps=10.0, n_mfcc=40, mfcc_steps=8, limit=16, progress=False, **common)
    stages.build_model_stage(run_name="pre", fusion="sync", trunk_stride=4, **common)
    with pytest.raises(ParameterError, match="`objective`"):
        stages.preprocess_stage(run_name="c", dataset="dummy", data_dir="", cache_dir=str(sync_cache), frames=16,
                                size=16, fps=10.0, n_mfcc=40, mfcc_steps=8, limit=16, progress=False, **common)
        stages.build_model_stage(run_name="c", **common)
        stages.train_stage(run_name="c", epochs=1, batch_size=4, lr=1e-3, device="cpu", workers=0,
                           objective="sync", progress=False, log=lambda *a: None, **common)
    history = stages.train_stage(run_name="pre", epochs=1, batch_size=4, lr=1e-3, device="cpu", workers=0,
                                 objective="sync", select_metric="val_loss", keep_last=0, progress=False,
                                 log=lambda *a: None, **common)
    assert len(history) == 1 and np.isfinite(history["val_loss"].iloc[0])
    real_train = CachedClips(sync_cache, "train", real_only=True)
    assert (real_train.labels == 0).all() and 0 < len(real_train) < len(CachedClips(sync_cache, "train"))
    best = tmp_path / "results" / "pre" / "checkpoints" / "best.pt"
    later = build_model(fusion="sync", fps=10.0, frames=16, sync_weights=best)
    trained = torch.load(best, weights_only=True)["model"]
    assert torch.equal(later.sync.audio.head.weight, trained["sync.audio.head.weight"])
    with pytest.raises(ValueError, match="sync"):
        build_model(sync_weights=best)


def test_predict_reports_each_windows_offset_for_a_sync_model(make_video, tmp_path):
    from avlib.figures.plots import plot_timeline
    from avlib.predict import score_file

    torch.manual_seed(0)
    model = inference_model(build_model(fusion="sync", fps=10.0, frames=16, trunk_stride=4))
    path = make_video("talk.mp4", n_frames=50, fps=25.0)                 # 2 s: windows of 1.6 s every 0.2 s
    cfg = {"frames": 16, "size": 16, "fps": 10.0, "n_mfcc": 40, "mfcc_steps": 8}
    windows = score_file(model, path, cfg, torch.device("cpu"), stride=0.2, max_windows=3)
    assert len(windows) >= 2 and {"offset_frames", "offset_ms", "offset_confidence", "sync_score"} <= set(windows)
    assert windows["offset_frames"].abs().max() <= 6
    assert (windows["offset_ms"] == 100.0 * windows["offset_frames"]).all()          # 10 fps: 100 ms a frame
    plot_timeline(windows, tmp_path / "t.png", "talk", 0.5)
    assert (tmp_path / "t.png").stat().st_size > 1000
