"""Training: resume continues exactly, checkpoints are kept by policy, faults are named."""
import numpy as np
import pandas as pd
import pytest
import torch

from avlib.dataio.loader import CachedClips, make_loader
from avlib.dataio.preprocess import settings, write_dummy_cache
from avlib.models.detector import build_model
from avlib.training.loop import NonFiniteLossError, ResumeError, fit, train_one_epoch

CONFIG = settings(frames=4, size=16, fps=25, n_mfcc=40, mfcc_steps=8)


@pytest.fixture
def tiny_cache(tmp_path):
    write_dummy_cache(tmp_path / "cache", CONFIG, n=16, seed=0)
    return tmp_path / "cache"


def _fit(cache, run, epochs, **kw):
    torch.manual_seed(0)
    model = build_model(video_encoder="framediff")      # 0.4 M parameters: the loop, not the trunk, is under test
    train = make_loader(CachedClips(cache, "train"), batch_size=4, train=True, seed=0)
    val = make_loader(CachedClips(cache, "val"), batch_size=4, train=False)
    history = fit(model, train, val, run_dir=run, epochs=epochs, lr=1e-3, device=torch.device("cpu"),
                  seed=0, progress=False, log=lambda *a: None, **kw)
    return model, history


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_cache, tmp_path):
    straight, h1 = _fit(tiny_cache, tmp_path / "a", 3)
    _fit(tiny_cache, tmp_path / "b", 1)
    resumed, h2 = _fit(tiny_cache, tmp_path / "b", 3)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), atol=1e-6), name
    assert list(h2["epoch"]) == [1, 2, 3]
    assert h1["train_loss"].tolist() == pytest.approx(h2["train_loss"].tolist(), rel=1e-5)


def test_checkpoint_retention_and_files(tiny_cache, tmp_path):
    _fit(tiny_cache, tmp_path / "r", 3, keep_last=2)
    ckpts = sorted(p.name for p in (tmp_path / "r" / "checkpoints").glob("*.pt"))
    assert ckpts == ["best.pt", "epoch_002.pt", "epoch_003.pt", "last.pt"]
    assert len(pd.read_csv(tmp_path / "r" / "history.csv")) == 3


def test_truncated_last_checkpoint_falls_back_to_the_previous_epoch(tiny_cache, tmp_path):
    _fit(tiny_cache, tmp_path / "t", 2, keep_last=2)
    last = tmp_path / "t" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    (tmp_path / "t" / "checkpoints" / "epoch_002.pt").write_bytes(b"")
    _, history = _fit(tiny_cache, tmp_path / "t", 2, keep_last=2)
    assert list(history["epoch"]) == [1, 2]            # epoch 1 restored, epoch 2 trained again


def test_resume_with_another_model_is_refused(tiny_cache, tmp_path):
    _fit(tiny_cache, tmp_path / "m", 1)
    torch.manual_seed(0)
    model = build_model(modality="video", video_encoder="framediff")
    train = make_loader(CachedClips(tiny_cache, "train"), batch_size=4, train=True)
    val = make_loader(CachedClips(tiny_cache, "val"), batch_size=4, train=False)
    with pytest.raises(ResumeError, match="modality"):
        fit(model, train, val, run_dir=tmp_path / "m", epochs=2, lr=1e-3, device=torch.device("cpu"),
            progress=False, log=lambda *a: None)


def test_non_finite_loss_names_epoch_and_batch(tiny_cache):
    model = build_model()
    with torch.no_grad():
        model.classifier[-1].bias.fill_(float("nan"))
    loader = make_loader(CachedClips(tiny_cache, "train"), batch_size=4, train=True)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with pytest.raises(NonFiniteLossError, match="epoch 7, batch 0"):
        train_one_epoch(model, torch.nn.CrossEntropyLoss(), opt, loader, torch.device("cpu"), 7)


def test_non_finite_gradient_names_the_tensor_and_leaves_the_weights_alone(tiny_cache):
    model = build_model()
    target = model.video_encoder.model.layer2[0].conv1[0][3].weight
    target.register_hook(lambda g: g * float("inf"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = make_loader(CachedClips(tiny_cache, "train"), batch_size=4, train=True)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    with pytest.raises(NonFiniteLossError, match=r"batch 0 .* in 1 tensor\(s\), first video_encoder.model.layer2.0.conv1.0.3.weight"):
        train_one_epoch(model, torch.nn.CrossEntropyLoss(), opt, loader, torch.device("cpu"), 1)
    for name, value in model.state_dict().items():
        if value.is_floating_point() and "running" not in name:     # BatchNorm statistics move in the forward pass
            assert torch.equal(value, before[name]), name


def test_compiled_training_computes_what_eager_does(tiny_cache, tmp_path):
    """torch.compile inside fit: same losses as eager at a learning rate too small for Adam's
    sign-like first steps to amplify rounding, weights that moved, plain names in checkpoints.
    Inductor draws dropout masks with its own generator unless told to use eager's."""
    import torch._inductor.config

    runs = {}
    for name, compile in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        model = build_model(video_encoder="framediff")
        start = {k: v.clone() for k, v in model.state_dict().items()}
        train = make_loader(CachedClips(tiny_cache, "train"), batch_size=4, train=True, seed=0)
        val = make_loader(CachedClips(tiny_cache, "val"), batch_size=4, train=False)
        # config.patch restores the setting afterwards (monkeypatch would delete the attribute)
        with torch._inductor.config.patch(fallback_random=True):
            history = fit(model, train, val, run_dir=tmp_path / name, epochs=1, lr=1e-6,
                          device=torch.device("cpu"), seed=0, compile=compile, progress=False, log=lambda *a: None)
        moved = max(float((v.float() - start[k].float()).abs().max()) for k, v in model.state_dict().items()
                    if v.is_floating_point())
        runs[name] = (history, moved)
    (h_eager, _), (h_compiled, moved) = runs["eager"], runs["compiled"]
    assert moved > 0
    for column in ("train_loss", "val_loss"):
        assert h_compiled[column].iloc[0] == pytest.approx(h_eager[column].iloc[0], rel=1e-3), column
    saved = torch.load(tmp_path / "compiled" / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod") for k in saved["model"])       # the plain model's names


def test_video_loss_trains_the_video_head_on_per_modality_labels(tiny_cache, tmp_path):
    data = CachedClips(tiny_cache, "all", video_labels=True)
    assert data.video_labels.tolist() == [int(c in ("FVRA", "FVFA")) for c in data.index["category"]]
    assert {"RVFA", "FVRA"} <= set(data.index["category"])          # an audio-only fake is labelled 0
    assert len(data[0]) == 4 and data[0][-1] == data.video_labels[0]
    blended = CachedClips(tiny_cache, "all", video_labels=True, self_blend=1.0)
    real = int((data.labels == 0).argmax())
    assert blended[(real, 3)][2:] == (1, 1)                           # a self-blend's video is manipulated

    heads = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_model(video_encoder="framediff", video_head=True)
        before = model.video_head.weight.detach().clone()
        train = make_loader(CachedClips(tiny_cache, "train", video_labels=weight > 0), batch_size=4, train=True)
        val = make_loader(CachedClips(tiny_cache, "val"), batch_size=4, train=False)
        fit(model, train, val, run_dir=tmp_path / str(weight), epochs=1, lr=1e-3, device=torch.device("cpu"),
            progress=False, log=lambda *a: None, keep_last=0, video_weight=weight)
        heads[weight] = not torch.equal(model.video_head.weight, before)
    assert heads == {0.0: False, 1.0: True}          # the head is not in the output: only its own loss trains it
    video, audio = torch.rand(2, 3, 4, 16, 16, requires_grad=True), torch.randn(2, 8, 40)
    model.zero_grad(set_to_none=True)
    model.train()(video, audio).sum().backward()
    assert all(p.grad is None for p in model.video_encoder.parameters())   # nor does the classifier train the trunk


def test_video_loss_needs_a_video_head_and_labels_that_name_the_modality(tiny_cache, tmp_path):
    from avlib import stages
    from avlib.core.params import ParameterError

    common = dict(results_dir=str(tmp_path / "results"))
    stages.preprocess_stage(run_name="r", dataset="dummy", data_dir="", cache_dir=str(tiny_cache), frames=4, size=16,
                            fps=25.0, n_mfcc=40, mfcc_steps=8, limit=16, progress=False, **common)
    stages.build_model_stage(run_name="r", **common)
    train = dict(run_name="r", epochs=1, batch_size=4, lr=1e-3, device="cpu", workers=0, progress=False,
                 log=lambda *a: None, video_loss=1.0, **common)
    with pytest.raises(ParameterError, match="video_head: true"):
        stages.train_stage(**train)
    stages.build_model_stage(run_name="r", video_encoder="framediff", video_head=True, **common)
    with pytest.raises(ParameterError, match="`video_loss` is 0.*untrained"):
        stages.train_stage(**{**train, "video_loss": 0.0})
    index = pd.read_csv(tiny_cache / "index.csv")
    folder = index.assign(category=index["category"].where(index["label"] == 0, "fake"))   # real/ and fake/ only
    folder.to_csv(tiny_cache / "index.csv", index=False)
    with pytest.raises(ParameterError, match="`video_loss` needs per-modality labels.*fake"):
        stages.train_stage(**train)
    index.to_csv(tiny_cache / "index.csv", index=False)
    history = stages.train_stage(**train)
    assert len(history) == 1 and np.isfinite(history["train_loss"].iloc[0])


def test_a_loader_collects_earlier_iterators_before_its_workers_fork():
    """An earlier loader's iterator left as garbage was inherited by the next loader's forked
    workers, whose collector then ran its __del__ there ("AssertionError: can only test a child
    process" in 04's output). A loader of make_loader collects it in the parent first, each time
    its workers start (a validation loader starts them every epoch)."""
    import gc

    from torch.utils.data import TensorDataset
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    from avlib.dataio.loader import make_loader

    def iterators():
        return [o for o in gc.get_objects() if type(o) is _MultiProcessingDataLoaderIter]

    data = TensorDataset(torch.arange(8.0))
    later = make_loader(data, batch_size=2, train=False, workers=1)       # made before the garbage
    gc.disable()
    try:
        gc.collect()
        it = iter(make_loader(data, batch_size=2, train=False, workers=1))
        next(it)
        loop = [it]
        loop.append(loop)                  # reachable by the collector only, as a finished loader's iterator was
        del it, loop
        assert len(iterators()) == 1
        fresh = iter(later)
        assert iterators() == [fresh]
        assert [batch[0].tolist() for batch in fresh] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]
    finally:
        gc.enable()
