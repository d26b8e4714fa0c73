"""The CUDA path: training, checkpoints and scoring on a GPU agree with the CPU.

Skipped where no CUDA device is present (CI, the 2-core development machine); run on a lent
GPU machine with `python -m pytest tests/test_cuda.py`."""
import pandas as pd
import pytest
import torch

from avlib.dataio.loader import CachedClips, make_loader
from avlib.dataio.preprocess import settings, write_dummy_cache
from avlib.evaluation.evaluate import evaluate_run
from avlib.models.detector import build_model, inference_model
from avlib.scoring.forward import predict
from avlib.scoring.scorer import load_detector
from avlib.training.loop import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIG = settings(frames=8, size=32, fps=25, n_mfcc=40, mfcc_steps=20)
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture
def cache(tmp_path):
    write_dummy_cache(tmp_path / "cache", CONFIG, n=24, seed=0)
    return tmp_path / "cache"


def _probs(model, cache, device, split="val", **kw):
    loader = make_loader(CachedClips(cache, split), batch_size=4, train=False, device=device)
    return torch.as_tensor(predict(model.to(device), loader, device, **kw)["probs"])


def test_same_weights_score_the_same_on_gpu_and_cpu(cache):
    torch.manual_seed(0)
    model = build_model().eval()
    on_cpu = _probs(model, cache, CPU, channels_last=False)
    on_gpu = _probs(model, cache, CUDA)                        # channels_last_3d, TF32 convolutions
    assert torch.allclose(on_cpu, on_gpu, atol=5e-3), (on_cpu - on_gpu).abs().max()
    fast = inference_model(model.to(CUDA), amp=True)
    bf16 = _probs(fast, cache, CUDA, amp=True)
    assert (bf16 - on_cpu).abs().max() < 0.05


def test_bf16_training_on_gpu_resumes_and_its_checkpoint_scores_the_same_on_cpu(cache, tmp_path):
    torch.manual_seed(0)
    train = make_loader(CachedClips(cache, "train"), batch_size=4, train=True, device=CUDA)
    val = make_loader(CachedClips(cache, "val"), batch_size=4, train=False, device=CUDA)
    assert train.pin_memory
    run = tmp_path / "run"
    fit(build_model(), train, val, run_dir=run, epochs=1, lr=1e-3, device=CUDA, amp=True, progress=False,
        log=lambda *a: None)
    history = fit(build_model(), train, val, run_dir=run, epochs=2, lr=1e-3, device=CUDA, amp=True,
                  progress=False, log=lambda *a: None)
    assert list(history["epoch"]) == [1, 2]
    assert history[["train_loss", "val_loss"]].notna().all().all()
    model, state = load_detector(run / "checkpoints" / "last.pt", "cpu")
    assert state["epoch"] == 2 and next(model.parameters()).device.type == "cpu"
    on_cpu = _probs(model, cache, CPU, channels_last=False)
    gpu_model, _ = load_detector(run / "checkpoints" / "last.pt", "cuda")
    on_gpu = _probs(gpu_model, cache, CUDA)
    assert torch.allclose(on_cpu, on_gpu, atol=5e-3), (on_cpu - on_gpu).abs().max()


def test_evaluate_on_gpu_with_bf16_and_compile_matches_eager(cache, tmp_path):
    model = build_model()
    run = tmp_path / "run"
    loader = make_loader(CachedClips(cache, "train"), batch_size=4, train=True, device=CUDA)
    fit(model, loader, make_loader(CachedClips(cache, "val"), batch_size=4, train=False, device=CUDA), run_dir=run,
        epochs=1, lr=1e-3, device=CUDA, progress=False, log=lambda *a: None)
    eager, _ = evaluate_run(run / "checkpoints" / "best.pt", cache, run, batch_size=4, device="cuda", workers=0,
                         amp=True, progress=False)
    p_eager = pd.read_csv(run / "predictions.csv")["p_fake"].to_numpy()
    compiled, _ = evaluate_run(run / "checkpoints" / "best.pt", cache, run, batch_size=4, device="cuda", workers=0,
                            amp=True, compile=True, progress=False)
    p_compiled = pd.read_csv(run / "predictions.csv")["p_fake"].to_numpy()
    assert eager["n"] == compiled["n"] and len(p_eager) == len(p_compiled) > 0
    assert abs(p_eager - p_compiled).max() < 0.02
