"""Benchmarks that print figures (not timed tests):

    python -m avlib.bench preprocess [--clips 120] [--workers 2]
    python -m avlib.bench train [--frames 16] [--size 64] [--batch 8] [--steps 2] [--repeats 3] [--compile]
                                [--device cpu|cuda] [--amp auto|true|false]
    python -m avlib.bench fit --device cuda --frames 128 --size 112 --batch 8 --clips 160 --workers 8
    python -m avlib.bench predict [--seconds 300] [--video-size 224] [--full] [--batch 8] [--workers 2] [--repeats 3]
    python -m avlib.bench localise [--seconds 300] [--video-size 224] [--size 48]

preprocess: the same clips processed two ways in one run. The seed's way: OpenCV frame reads
resized to 112x112, audio extracted to WAV by an ffmpeg process and loaded by librosa (22.05 kHz),
MFCC, float32 .npy files, one process. Ours: avlib.dataio.preprocess (PyAV single pass, uint8 cache,
`workers` processes). Then a warm-cache DataLoader read of our cache. Clips are synthetic
talking faces of 224x224 at 25 fps, 6 s long, encoded H.264/AAC.

train: the seed's loop (fp32, default memory format, float32 video from the loader) and ours
(bf16 autocast for the video encoder where --amp resolves to it: by default only on hardware
that computes in bf16 natively; channels_last_3d, uint8 video converted on the device)
at the same reduced configuration in one process, same initial weights, timed in interleaved
rounds: training and inference clips/s (medians) and their ratio (--compile adds our loop under
torch.compile, with its compile time); the seed's loop alone in a fresh process with glibc's
default malloc (how the seed's notebook runs); then, when ours runs in bf16, the largest
|P(fake)| difference between bf16 and fp32 inference on the same clips and the AUC of each (on
the clips of --cache with the weights of --checkpoint when given). On CUDA the seed's loop alone is skipped (glibc's allocator
does not hold GPU memory).

predict: seconds of video scored per second by python -m avlib.predict's path (each file decoded
once, windows batched, decoding in --workers processes) and by the per-window loop it replaced
(each window opened, sought, decoded and scored alone), on the same generated H.264/AAC file in
interleaved rounds; the share of the time spent decoding, and peak RSS.

localise: per-frame P(fake) of one generated file by python -m avlib.localise --checkpoint's path
(decoded once, in windows) and by decoding the whole video into memory first (as the training
cache does), each in a fresh process, with each one's peak RSS beside a process holding the model
alone: the streamed path's memory does not grow with the video's length.

fit: the real 03_train path end to end (cache -> make_loader -> fit, amp, channels_last_3d) on
random clips at the given size: the loader's clips/s from a warm cache, then the last epoch's
training clips/s. Run it at full size on a GPU to see whether the loader keeps the card fed.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import librosa
import numpy as np

from avlib.core.runtime import cpu_description, pick_device, resolve_amp, tune_allocator
from avlib.dataio.decode import decode_clip
from avlib.dataio.features import compute_mfcc
from avlib.dataio.indexers import index_dataset
from avlib.dataio.inputs import InputLimits, check_input
from avlib.dataio.preprocess import preprocess, settings, write_dummy_cache
from avlib.dataio.synthetic import CorpusSpec, generate_corpus
from avlib.dataio.video_cache import decode_whole


def seed_preprocess(paths: list[Path], out_dir: Path, frames: int = 128, size: int = 112, n_mfcc: int = 40,
                    steps: int = 200) -> int:
    """The seed notebook's pipeline, as its text describes it; returns bytes written."""
    import imageio_ffmpeg  # deferred: a GPU machine may lack it, and benches given --input need no encoder

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        cap = cv2.VideoCapture(str(path))
        images = []
        while len(images) < frames:
            ok, frame = cap.read()
            if not ok:
                break
            images.append(cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), (size, size)))
        cap.release()
        while len(images) < frames:
            images.append(images[-1])
        video = np.stack(images).astype(np.float32) / 255.0
        wav = out_dir / f"{i}.wav"
        subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-i", str(path), "-vn", "-ac", "1", str(wav)], check=True)
        y, sr = librosa.load(wav)
        mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=n_mfcc).T
        mfcc = np.pad(mfcc, ((0, max(0, steps - len(mfcc))), (0, 0)))[:steps].astype(np.float32)
        np.save(out_dir / f"{i}_video.npy", video)
        np.save(out_dir / f"{i}_mfcc.npy", mfcc)
        wav.unlink()
    return sum(f.stat().st_size for f in out_dir.glob("*.npy"))


def bench_preprocess(clips: int, workers: int) -> dict:

    tmp = Path(tempfile.mkdtemp(prefix="avlib-bench-"))
    try:
        identities = max(2, -(-clips // 5))
        print(f"generating {identities * 5} clips (224x224, 25 fps, 6 s, H.264/AAC) ...", flush=True)
        generate_corpus(tmp / "data", CorpusSpec(identities=identities, seconds=6.0, size=224), workers=workers,
                        progress=False)
        records = index_dataset("fakeavceleb", tmp / "data").head(clips)
        paths = [tmp / "data" / p for p in records["path"]]

        start = time.perf_counter()
        seed_bytes = seed_preprocess(paths, tmp / "seed")
        seed_s = time.perf_counter() - start

        config = settings(frames=128, size=112, fps=25, n_mfcc=40, mfcc_steps=200)
        start = time.perf_counter()
        report = preprocess(records, tmp / "data", tmp / "cache", config, workers=workers, progress=False)
        ours_s = time.perf_counter() - start
        assert report["clips_cached"] == len(paths), report

        import torch  # deferred: loaded only now, as the decoding pool forks only without torch (module docstring)

        from avlib.dataio.loader import CachedClips, make_loader  # deferred: loads torch

        ds = CachedClips(tmp / "cache", "all")
        loader = make_loader(ds, batch_size=8, train=True, workers=workers)
        for _ in loader:       # warm the page cache and the workers
            pass
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < 5:
            for video, _, _ in loader:
                n += len(video)
                assert video.dtype == torch.uint8
        loader_cps = n / (time.perf_counter() - start)
        out = {
            "clips": len(paths), "workers": workers,
            "seed_clips_per_s": len(paths) / seed_s, "ours_clips_per_s": len(paths) / ours_s,
            "speedup": seed_s / ours_s,
            "seed_bytes_per_clip": seed_bytes / len(paths), "ours_bytes_per_clip": report["bytes_per_clip"],
            "warm_cache_loader_clips_per_s": loader_cps,
        }
        out["bytes_ratio"] = out["ours_bytes_per_clip"] / out["seed_bytes_per_clip"]
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _timed_rounds(steps_of: dict, clips_per_call: int, calls: int, repeats: int, log, what: str,
                  sync=lambda: None) -> dict:
    """{name: [clips/s per round]}: each round calls every function `calls` times in turn, so
    a 2-core VM's drift (30 % from minute to minute) is spread over all of them. One untimed
    warm-up call each first (allocations, oneDNN/cuDNN kernel choice). `sync` waits for queued
    device work (CUDA runs asynchronously) before the clock is read."""
    for step in steps_of.values():
        step()
    sync()
    rounds = {name: [] for name in steps_of}
    for r in range(repeats):
        for name, step in steps_of.items():
            start = time.perf_counter()
            for _ in range(calls):
                step()
            sync()
            rounds[name].append(clips_per_call * calls / (time.perf_counter() - start))
        log(f"  {what} round {r + 1}/{repeats}: " + ", ".join(f"{n} {v[-1]:.2f}" for n, v in rounds.items()) + " clips/s")
    return rounds


def bench_train(frames: int, size: int, batch: int, steps: int, repeats: int = 3, compile: bool = False,
                checkpoint: str | None = None, cache_dir: str | None = None, log=print, *,
                seed_only: bool = False, device: str = "cpu", amp: bool | str = "auto") -> dict:
    """Seed's loop against ours, same weights and batches, timed in interleaved rounds.

    Each round times `steps` training steps of the seed, then of ours, then `steps` inference
    batches of each; figures are medians over `repeats` rounds (a 2-core VM's speed drifts
    by 30 % from minute to minute, and interleaving spreads the drift over both loops).
    Inference in "ours" is what 04_evaluate and avlib.predict run: `inference_model` (BatchNorm
    folded, channels_last_3d; bf16 weights under bf16 autocast when `amp` resolves to bf16, as
    `avlib.core.runtime.resolve_amp` decides for 03 and 04).

    Both loops run under avlib's allocator settings (`tune_allocator`), so the ratio is one of
    compute. seed_only=True times the seed's loop alone with glibc's defaults, as the seed's
    notebook runs (`seed_loop_alone` runs it in a fresh process).

    On a CUDA `device` the batches start on the host, as a loader yields them: the seed's as
    float32 in pageable memory, ours as uint8 in pinned memory (make_loader pins for CUDA);
    ours runs with cuDNN's autotuner on (what `fit` sets on CUDA), the seed's with the default."""
    import torch  # deferred: loads torch


    if not seed_only:
        tune_allocator()

    from avlib.models.detector import build_model, inference_model, video_to_model_input  # deferred: loads torch

    torch.manual_seed(0)
    dev = torch.device(device)
    amp = not seed_only and resolve_amp(amp, dev, log=log)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    video_u8 = torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8)
    video_f32 = video_u8.float() / 255.0                      # what the seed's loader yields
    if cuda:
        video_u8 = video_u8.pin_memory()
    audio = torch.randn(batch, 200, 40)
    labels = torch.randint(0, 2, (batch,))
    seed_model = build_model().to(dev)
    nets = {"seed": seed_model}
    if not seed_only:
        nets["ours"] = build_model().to(dev)
        nets["ours"].load_state_dict(seed_model.state_dict())
        nets["ours"].to(memory_format=torch.channels_last_3d)
    optimizers = {name: torch.optim.Adam(net.parameters(), 1e-4) for name, net in nets.items()}

    def inputs(name: str):
        """(video, audio, labels) on the device, as each loop moves them there."""
        torch.backends.cudnn.benchmark = name != "seed"
        if name == "seed":
            video = video_f32.to(dev)
        else:
            video = video_to_model_input(video_u8, dev, channels_last=True)
        return video, audio.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)

    def train_step(name: str) -> None:
        net = nets[name]
        net.train()
        video, a, y = inputs(name)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and name != "seed"):
            logits = net(video, a)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    out = {"frames": frames, "size": size, "batch": batch, "steps": steps, "repeats": repeats, "device": str(dev),
           "amp": amp}
    if cuda:
        out["device_name"] = torch.cuda.get_device_name(dev)
    if compile and not seed_only:
        nets["ours_compiled"] = torch.compile(nets["ours"], dynamic=False)
        optimizers["ours_compiled"] = optimizers["ours"]
        start = time.perf_counter()
        train_step("ours_compiled")
        sync()
        out["compile_train_seconds"] = time.perf_counter() - start
    rounds = _timed_rounds({name: (lambda n=name: train_step(n)) for name in nets}, batch, steps, repeats, log, "train",
                           sync)
    for name, values in rounds.items():
        out[f"{name}_train_clips_per_s"], out[f"{name}_train_rounds"] = float(np.median(values)), values

    # Inference, after the same training steps (BatchNorm statistics as in a trained model)
    seed_model.eval()

    @torch.no_grad()
    def infer(model, name: str) -> None:
        video, a, _ = inputs(name)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and name != "seed"):
            model(video, a)

    scorers = {"seed": lambda: infer(seed_model, "seed")}
    if not seed_only:
        fast = inference_model(nets["ours"], amp=amp)
        scorers["ours"] = lambda: infer(fast, "ours")
    if compile and not seed_only:
        compiled = inference_model(nets["ours"], amp=amp, compile=True)
        start = time.perf_counter()
        infer(compiled, "ours_compiled")
        sync()
        out["compile_infer_seconds"] = time.perf_counter() - start
        scorers["ours_compiled"] = lambda: infer(compiled, "ours_compiled")
    rounds = _timed_rounds(scorers, batch, steps, repeats, log, "inference", sync)
    for name, values in rounds.items():
        out[f"{name}_infer_clips_per_s"], out[f"{name}_infer_rounds"] = float(np.median(values)), values
    if seed_only:
        return out
    for name in list(nets)[1:]:
        out[f"{name}_train_speedup"] = out[f"{name}_train_clips_per_s"] / out["seed_train_clips_per_s"]
        out[f"{name}_infer_speedup"] = out[f"{name}_infer_clips_per_s"] / out["seed_infer_clips_per_s"]
    out["train_speedup"], out["infer_speedup"] = out["ours_train_speedup"], out["ours_infer_speedup"]
    if cuda:
        out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
    if amp:          # in fp32 both loops compute the same function: nothing to compare
        out.update(bf16_agreement(batch, frames, size, checkpoint, cache_dir, device))
    return out


def bench_fit(frames: int, size: int, batch: int, clips: int, workers: int, epochs: int, device: str,
              compile: bool = False) -> dict:
    """The real training path end to end: a cache of random clips written through avlib.dataio.cache,
    make_loader (pinned memory on CUDA, `workers` processes) and `fit` with amp: auto (bf16 where
    the hardware computes in it) and channels_last_3d, as 03_train runs it. Reports the last epoch's training clips/s from
    history.csv, and what the loader alone delivers from the warm cache."""
    import torch  # deferred: loads torch

    from avlib.dataio.loader import CachedClips, make_loader  # deferred: loads torch
    from avlib.models.detector import build_model  # deferred: loads torch
    from avlib.training.loop import fit  # deferred: loads torch

    tune_allocator()
    dev = pick_device(device)
    amp = resolve_amp("auto", dev)
    tmp = Path(tempfile.mkdtemp(prefix="avlib-fit-"))
    try:
        config = settings(frames=frames, size=size, fps=25, n_mfcc=40, mfcc_steps=200)
        write_dummy_cache(tmp / "cache", config, n=clips, seed=0, val_fraction=0.1, test_fraction=0.0)
        train_set, val_set = CachedClips(tmp / "cache", "train"), CachedClips(tmp / "cache", "val")
        loader = make_loader(train_set, batch_size=batch, train=True, workers=workers, device=dev)
        val_loader = make_loader(val_set, batch_size=batch, train=False, workers=workers, device=dev)
        for _ in loader:                     # warm the page cache and start the workers
            pass
        start, n = time.perf_counter(), 0
        for video, _, _ in loader:
            n += len(video)
        loader_cps = n / (time.perf_counter() - start)
        torch.manual_seed(0)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        history = fit(build_model(), loader, val_loader, run_dir=tmp / "run", epochs=epochs, lr=1e-4, device=dev,
                      amp=amp, channels_last=True, compile=compile, keep_last=1, progress=False, log=print)
        last = history.iloc[-1]
        out = {"clips": clips, "train_clips": len(train_set), "device": str(dev), "pinned": loader.pin_memory,
               "amp": amp,
               "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
               "loader_clips_per_s": loader_cps, "train_clips_per_s": float(last["train_clips_per_s"]),
               "epoch_seconds": float(last["seconds"])}
        if dev.type == "cuda":
            out["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def seed_loop_alone(frames: int, size: int, batch: int, steps: int, repeats: int) -> dict:
    """The seed's loop timed in a fresh Python process with glibc's default allocator: how the
    seed's notebook runs. Returns its train/infer clips/s (medians)."""
    cmd = [sys.executable, "-m", "avlib.bench", "seed-alone", "--frames", str(frames), "--size", str(size),
           "--batch", str(batch), "--steps", str(steps), "--repeats", str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bf16_agreement(batch: int, frames: int, size: int, checkpoint: str | None, cache_dir: str | None,
                   device: str = "cpu") -> dict:
    """Largest |P(fake)| difference between fp32 inference of the plain model and bf16
    inference of `inference_model(amp=True)`, and the AUC of each, on the same clips."""
    import torch  # deferred: loads torch

    from avlib.models.detector import build_model, inference_model, video_to_model_input  # deferred: loads torch
    from avlib.scoring.forward import safe_auc  # deferred: loads torch

    dev = torch.device(device)
    if checkpoint and cache_dir:
        from avlib.dataio.loader import CachedClips, make_loader  # deferred: loads torch
        from avlib.scoring.scorer import load_detector  # deferred: loads torch

        model, _ = load_detector(checkpoint, device)
        loader = make_loader(CachedClips(cache_dir, "test"), batch_size=batch, train=False)
        source = f"{checkpoint} on the test split of {cache_dir}"
    else:
        from torch.utils.data import DataLoader  # deferred: loads torch

        from avlib.dataio.loader import RandomClips  # deferred: loads torch

        model = build_model().to(dev).eval()
        loader = DataLoader(RandomClips(64, frames, size), batch_size=batch)
        source = "untrained weights on random clips (pass --checkpoint and --cache for a trained model)"
    fast = inference_model(model, amp=True)
    p32, p16, ys = [], [], []
    with torch.no_grad():
        for video, mfcc, y in loader:
            ys.append(y)
            mfcc = mfcc.to(dev)
            p32.append(torch.softmax(model(video_to_model_input(video, dev, channels_last=False), mfcc).float(), 1)[:, 1].cpu())
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                p16.append(torch.softmax(fast(video_to_model_input(video, dev), mfcc).float(), 1)[:, 1].cpu())
    p32, p16, y = torch.cat(p32), torch.cat(p16), torch.cat(ys).numpy()
    return {"agreement_source": source, "max_abs_prob_diff": float((p32 - p16).abs().max()),
            "auc_fp32": safe_auc(y, p32.numpy()), "auc_bf16": safe_auc(y, p16.numpy())}


def bench_sync(frames: int, size: int, batch: int, steps: int, repeats: int = 2, device: str = "cpu",
               fps: float = 25.0, log=print) -> dict:
    """What the sync branch costs: a training step (cross-entropy, plus the offset loss for the
    sync model) and an inference pass (inference_model copies) of the seed's model and of the
    same model with fusion='sync' (trunk_stride 1, so the trunks do the same work), timed in
    interleaved rounds. Returns clips/s per model and the sync model's extra time in %."""
    import torch  # deferred: loads torch

    from avlib.models.detector import build_model, inference_model, video_to_model_input  # deferred: loads torch
    from avlib.scoring.forward import forward_batch  # deferred: loads torch

    tune_allocator()
    dev = torch.device(device)
    models = {}
    for fusion in ("concat", "sync"):
        torch.manual_seed(0)
        models[fusion] = build_model(fusion=fusion, fps=fps, frames=frames).to(dev).to(
            memory_format=torch.channels_last_3d)
    g = torch.Generator().manual_seed(0)
    video = video_to_model_input(torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8, generator=g), dev)
    mfcc = torch.randn(batch, 200, 40, generator=g).to(dev)
    wave = (0.1 * torch.randn(batch, int(round(frames / fps * 16000)), generator=g)).to(dev)
    labels = torch.zeros(batch, dtype=torch.long, device=dev)
    optimizers = {k: torch.optim.Adam(m.parameters(), 1e-4) for k, m in models.items()}
    criterion = torch.nn.CrossEntropyLoss()
    sync_device = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def train_step(name):
        model = models[name].train()
        extra = [wave] if name == "sync" else []
        _, _, loss = forward_batch(model, video, mfcc, labels, extra, criterion=criterion, objective="classify",
                              sync_weight=1.0 if name == "sync" else 0.0)
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    train = _timed_rounds({k: (lambda k=k: train_step(k)) for k in models}, batch, steps, repeats, log, "train",
                          sync_device)
    fast = {k: inference_model(m) for k, m in models.items()}

    @torch.no_grad()
    def infer(name):
        fast[name](video, mfcc, *([wave] if name == "sync" else []))

    infer_rounds = _timed_rounds({k: (lambda k=k: infer(k)) for k in models}, batch, steps, repeats, log, "inference",
                                 sync_device)
    out = {}
    for what, rounds in (("train", train), ("infer", infer_rounds)):
        for k, v in rounds.items():
            out[f"{k}_{what}_clips_per_s"] = float(np.median(v))
        out[f"sync_{what}_overhead_pct"] = 100.0 * (out[f"concat_{what}_clips_per_s"] / out[f"sync_{what}_clips_per_s"] - 1)
    out["sync_branch_parameters"] = sum(p.numel() for p in models["sync"].sync.parameters())
    return out


def _talk_video(path: Path, seconds: float, size: int) -> Path:
    """An H.264/AAC file of `seconds` at size x size, 25 fps, 16 kHz (FFmpeg's test pattern and a
    tone, encoded by the ffmpeg binary imageio-ffmpeg ships: no frame is held in memory)."""
    import imageio_ffmpeg  # deferred: a GPU machine may lack it, and benches given --input need no encoder

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}x{size}:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000", "-t", str(seconds),
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)],
                   check=True)
    return path


def bench_predict(seconds: float, size: int, repeats: int, workers: int, batch: int, full: bool,
                  videos: int = 1, device: str = "cpu", source: str | None = None, amp: bool | str = "auto",
                  log=print) -> dict:
    """Seconds of video scored per second by predict's path (decode once, windows batched across
    files, decoding in `workers` processes) and by the per-window loop it replaced (open, seek and
    decode each window, score it alone), on the same files (`videos` copies of one file of
    `seconds`, or of `source` when given: a folder of short clips), in interleaved rounds, on
    `device`; the share of the time spent decoding; peak RSS (and peak GPU memory on CUDA).
    Untrained weights: speed does not depend on them."""
    import torch  # deferred: loads torch

    from avlib.models.detector import build_model, inference_model, video_to_model_input  # deferred: loads torch
    from avlib.scoring.videos import VideoWindows, WindowPlan, score_videos, window_starts  # deferred: loads torch

    tmp = Path(tempfile.mkdtemp(prefix="avlib-bench-"))
    try:
        if source is None:
            path = _talk_video(tmp / "talk.mp4", seconds, size)
        else:              # a given file (one made elsewhere, or the user's own): its own length
            path = shutil.copy(source, tmp / f"talk{Path(source).suffix}")
            seconds = check_input(Path(path), InputLimits())
            if not seconds:
                raise ValueError(f"--input {source}: its header gives no duration, which the figures divide by")
        paths = [path] + [shutil.copy(path, tmp / f"talk{i}{Path(path).suffix}") for i in range(1, videos)]
        if full:       # the seed's model and window: R(2+1)D-18 on 128 frames of 112x112 at 25 fps, 40 x 200 MFCC
            cfg = dict(frames=128, size=112, fps=25.0, n_mfcc=40, mfcc_steps=200, sample_rate=16000)
            model = build_model()
        else:          # the sync demo's: 32 frames of 32x32 at 16 fps, framediff trunk, sync branch
            cfg = dict(frames=32, size=32, fps=16.0, n_mfcc=40, mfcc_steps=50, sample_rate=16000)
            model = build_model(fusion="sync", fps=16.0, frames=32, video_encoder="framediff", video_head=True)
        tune_allocator()
        device = torch.device(device)
        amp = resolve_amp(amp, device)
        model = model.to(device)
        model = inference_model(model.eval(), amp=amp)
        sync = model.fusion == "sync"
        plan = WindowPlan(cfg)
        starts = window_starts(seconds, plan.seconds, plan.seconds)

        def one_window(path, start):     # open, seek, decode and score one window alone
            clip = decode_clip(path, frames=cfg["frames"], size=cfg["size"], fps=cfg["fps"], offset=start, threads=1)
            video = torch.from_numpy(np.ascontiguousarray(clip.video.transpose(3, 0, 1, 2)))[None]
            inputs = [video_to_model_input(video, device),
                      torch.from_numpy(compute_mfcc(clip.audio, 16000, cfg["n_mfcc"], cfg["mfcc_steps"]))[None]
                      .to(device)]
            if sync:
                inputs.append(torch.from_numpy(clip.audio)[None].to(device))
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                model(*inputs)[0].float().cpu()          # the score reaches the host, as predict's does

        def per_window():
            for path in paths:
                for start in starts:
                    one_window(path, start)

        def streamed(n_workers):
            score_videos(model, paths, plan, device, batch_size=batch, workers=n_workers, amp=amp,
                         on_video=lambda *a: None)

        def decode_only():
            for _ in VideoWindows(paths, plan):
                pass

        # untimed: CUDA's start, the first calls of each kernel and the loader, outside every figure
        first = WindowPlan(cfg, max_windows=batch)
        score_videos(model, paths[:1], first, device, batch_size=batch, amp=amp, on_video=lambda *a: None)
        one_window(paths[0], 0.0)
        total = seconds * videos
        times = {"per-window loop": [], f"predict, {workers} workers": [], "predict, no workers": [],
                 "decoding alone": []}
        for r in range(repeats):
            for name, run in zip(times, (per_window, lambda: streamed(workers), lambda: streamed(0), decode_only)):
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
            log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {total / v[-1]:.1f}" for k, v in times.items())
                + " s of video/s")
        mean = {k: float(np.mean(v)) for k, v in times.items()}
        rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        gpu = ({"peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 1e9,
                "device_name": torch.cuda.get_device_name(device)} if device.type == "cuda" else {})
        return {"seconds": total, "videos": videos, "windows": len(starts) * videos, "amp": amp, **gpu,
                **{f"{k} video_s_per_s": total / v for k, v in mean.items()},
                "speedup": mean["per-window loop"] / mean[f"predict, {workers} workers"],
                "decode_share": mean["decoding alone"] / mean["predict, no workers"],
                "peak_rss_mb": rss[0] / 1024, "peak_rss_worker_mb": rss[1] / 1024}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def localise_one(path: str, mode: str, size: int, device: str = "cpu") -> dict:
    """One localisation pass over `path` in this process (the demo localiser's shape, untrained):
    `stream` (predict's path: decoded once, in windows), `whole` (the whole video decoded into
    memory first, as the training cache does) or `none` (the model alone, for the baseline RSS)."""
    import torch  # deferred: loads torch

    from avlib.models.localiser import FrameLocaliser  # deferred: loads torch
    from avlib.scoring.segments import frame_probabilities, stream_frame_probabilities  # deferred: loads torch

    torch.manual_seed(0)
    model = FrameLocaliser(fps=25.0, frames=50).eval().to(device)
    amp = resolve_amp("auto", torch.device(device))
    start = time.perf_counter()
    if mode == "stream":
        p, _ = stream_frame_probabilities(model, path, size=size, amp=amp, device=device)
    elif mode == "whole":
        video, audio = decode_whole(Path(path), fps=25.0, size=size, sample_rate=16000, threads=0)
        p = frame_probabilities(model, video, audio, amp=amp, device=device)
    else:
        p = np.zeros((0, 2))
    return {"seconds": time.perf_counter() - start, "frames": len(p),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def bench_localise(seconds: float, size: int, model_size: int, device: str = "cpu", source: str | None = None,
                   log=print) -> dict:
    """Per-frame localisation of one H.264/AAC file of `seconds` at size x size (or of `source`),
    on `device`: predict's streamed path against decoding the whole video first, each in a fresh
    process (so each peak RSS is its own), beside a process holding the model alone."""
    tmp = Path(tempfile.mkdtemp(prefix="avlib-bench-"))
    try:
        path = _talk_video(tmp / "talk.mp4", seconds, size) if source is None else Path(source)
        out = {}
        for mode in ("none", "stream", "whole"):
            done = subprocess.run([sys.executable, "-m", "avlib.bench", "localise-one", "--mode", mode, "--path",
                                   str(path), "--size", str(model_size), "--device", device], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"bench localise, mode {mode}: the child process failed:\n{done.stderr[-2000:]}")
            out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            log(f"  {mode}: {out[mode]['seconds']:.1f} s")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["preprocess", "train", "fit", "sync", "predict", "localise", "seed-alone",
                                         "localise-one"])
    parser.add_argument("--mode", default="stream", help="localise-one: stream, whole or none")
    parser.add_argument("--path", help="localise-one: the video")
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, help="frame side the model sees (default 64; localise: 48, the demo's)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="steps (batches) per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; figures are medians")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (train and inference)")
    parser.add_argument("--checkpoint", help="a trained best.pt, for the bf16/fp32 agreement")
    parser.add_argument("--cache", help="the cache that checkpoint was trained on")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (train, fit, predict, localise)")
    parser.add_argument("--epochs", type=int, default=2, help="fit: epochs (the last one is timed)")
    parser.add_argument("--fps", type=float, default=25.0, help="sync: the clips' frame rate")
    parser.add_argument("--seconds", type=float, default=300.0, help="predict: length of the video")
    parser.add_argument("--videos", type=int, default=1, help="predict: that many files of --seconds (a folder of clips)")
    parser.add_argument("--video-size", type=int, default=224, help="predict: the video's frame side (720 for 720p-ish)")
    parser.add_argument("--input", help="predict, localise: score (copies of) this file instead of a generated one")
    parser.add_argument("--full", action="store_true", help="predict: the seed's full-size model, not the sync demo's")
    parser.add_argument("--amp", default="auto", choices=["auto", "true", "false"],
                        help="train, predict: bf16 autocast; auto: where the hardware computes in bf16 natively")
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 48 if args.what in ("localise", "localise-one") else 64
    if args.what == "seed-alone":                 # used by seed_loop_alone: one JSON line on stdout

        r = bench_train(args.frames, args.size, args.batch, args.steps, args.repeats, seed_only=True,
                        log=lambda *a: None)
        print(json.dumps({k: r[k] for k in ("seed_train_clips_per_s", "seed_infer_clips_per_s")}))
        return 0
    if args.what == "localise-one":               # used by bench_localise: one JSON line on stdout
        print(json.dumps(localise_one(args.path, args.mode, args.size, args.device)))
        return 0
    if args.what == "localise":
        if args.input:
            args.seconds = check_input(Path(args.input), InputLimits())
            if not args.seconds:
                parser.error(f"--input {args.input}: its header gives no duration, which the figures divide by")
        what = args.input or f"one H.264/AAC video of {args.seconds:g} s, {args.video_size}x{args.video_size}"
        print(f"localise (per-frame P(fake), the demo localiser at {args.size}x{args.size}, 50 frames at 25 fps) "
              f"of {what}, on {args.device}; CPU: {cpu_description()}")
        r = bench_localise(args.seconds, args.video_size, args.size, args.device, args.input,
                           log=lambda line: print(line, flush=True))
        for mode, what in (("stream", "streamed (predict)"), ("whole", "whole video decoded first")):
            print(f"  {what:>26}: {args.seconds / r[mode]['seconds']:6.1f} s of video per second, peak RSS "
                  f"{r[mode]['peak_rss_mb']:,.0f} MB ({r[mode]['frames']} frames)")
        print(f"  {'the model alone':>26}: peak RSS {r['none']['peak_rss_mb']:,.0f} MB")
        return 0
    if args.what == "predict":
        what = (f"copies of {args.input}" if args.input else
                f"H.264/AAC video(s) of {args.seconds:g} s, {args.video_size}x{args.video_size}")
        print(f"predict on {args.videos} {what}, "
              f"{'the seed model (128x112x112)' if args.full else 'the sync demo model (32x32x32, 16 fps)'}, "
              f"batch {args.batch}, {args.repeats} interleaved rounds, on {args.device}; CPU: {cpu_description()}")
        r = bench_predict(args.seconds, args.video_size, args.repeats, args.workers, args.batch, args.full,
                          videos=args.videos, device=args.device, source=args.input,
                          amp="auto" if args.amp == "auto" else args.amp == "true")
        for key in [k for k in r if k.endswith("video_s_per_s")]:
            print(f"  {key[:-len(' video_s_per_s')]:>24}: {r[key]:7.1f} s of video per second (mean of {args.repeats})")
        print(f"  predict / per-window loop: {r['speedup']:.1f}x; decoding is {100 * r['decode_share']:.0f} % of "
              f"predict's time without workers; {r['windows']} windows ({'bf16' if r['amp'] else 'fp32'})")
        print(f"  peak RSS: {r['peak_rss_mb']:,.0f} MB this process, {r['peak_rss_worker_mb']:,.0f} MB the largest worker")
        if "peak_gpu_memory_gb" in r:
            print(f"  {r['device_name']}: peak GPU memory {r['peak_gpu_memory_gb']:.2f} GB")
        return 0
    if args.what == "sync":
        r = bench_sync(args.frames, args.size, args.batch, args.steps, args.repeats, args.device, args.fps)
        print(f"\nsync branch cost at {args.frames}x{args.size}x{args.size} ({args.fps:g} fps), batch {args.batch}, "
              f"{args.device}, fp32 (medians, clips/s):")
        for what in ("train", "infer"):
            print(f"  {what:5s}: seed's model {r[f'concat_{what}_clips_per_s']:7.2f}   fusion sync "
                  f"{r[f'sync_{what}_clips_per_s']:7.2f}   -> +{r[f'sync_{what}_overhead_pct']:.1f} % time")
        print(f"  the sync branch holds {r['sync_branch_parameters']:,} parameters")
        return 0
    if args.what == "fit":
        r = bench_fit(args.frames, args.size, args.batch, args.clips, args.workers, args.epochs, args.device,
                      args.compile)
        print(f"\nfit() from a {r['clips']}-clip cache at {args.frames}x{args.size}x{args.size}, batch {args.batch}, "
              f"{args.workers} loader workers, on {r['device_name']} ({'bf16 autocast' if r['amp'] else 'fp32'}, "
              f"channels_last_3d):")
        print(f"  loader alone (warm cache, pinned: {r['pinned']}): {r['loader_clips_per_s']:.1f} clips/s")
        print(f"  training, epoch {args.epochs} (history.csv): {r['train_clips_per_s']:.1f} clips/s; "
              f"epoch {r['epoch_seconds']:.1f} s with validation")
        if "peak_gpu_memory_gb" in r:
            print(f"  peak GPU memory: {r['peak_gpu_memory_gb']:.1f} GB")
        return 0
    if args.what == "train":
        import torch  # deferred: loads torch

        where = (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                 else f"{torch.get_num_threads()} CPU threads")
        print(f"training loop at {args.frames}x{args.size}x{args.size}, batch {args.batch}, "
              f"{where}; {args.repeats} interleaved rounds of {args.steps} steps")
        r = bench_train(args.frames, args.size, args.batch, args.steps, args.repeats, args.compile,
                        args.checkpoint, args.cache, device=args.device,
                        amp="auto" if args.amp == "auto" else args.amp == "true")
        print("\nmedians (clips/s), both loops in this process under avlib's allocator settings:")
        print(f"  seed's loop (fp32, contiguous, float32 loader): train {r['seed_train_clips_per_s']:6.2f}   "
              f"infer {r['seed_infer_clips_per_s']:6.2f}")
        print(f"  ours ({'bf16 autocast' if r['amp'] else 'fp32'}, channels_last_3d, uint8; BN folded for inference): "
              f"train {r['ours_train_clips_per_s']:6.2f}   infer {r['ours_infer_clips_per_s']:6.2f}")
        print(f"  speed-up: train {r['train_speedup']:.2f}x, inference {r['infer_speedup']:.2f}x")
        if args.compile:
            print(f"  ours + torch.compile: train {r['ours_compiled_train_clips_per_s']:6.2f} "
                  f"({r['ours_compiled_train_speedup']:.2f}x; compiling took {r['compile_train_seconds']:.0f} s)   "
                  f"infer {r['ours_compiled_infer_clips_per_s']:6.2f} ({r['ours_compiled_infer_speedup']:.2f}x; "
                  f"compiling took {r['compile_infer_seconds']:.0f} s)")
        if "peak_gpu_memory_gb" in r:
            print(f"  peak GPU memory: {r['peak_gpu_memory_gb']:.1f} GB")
        if args.device == "cpu":    # glibc's allocator does not touch GPU memory
            alone = seed_loop_alone(args.frames, args.size, args.batch, args.steps, args.repeats)
            print(f"  seed's loop alone in a fresh process, glibc's default malloc (as the seed's notebook runs): "
                  f"train {alone['seed_train_clips_per_s']:6.2f}   infer {alone['seed_infer_clips_per_s']:6.2f}  -> ours is "
                  f"{r['ours_train_clips_per_s'] / alone['seed_train_clips_per_s']:.2f}x / "
                  f"{r['ours_infer_clips_per_s'] / alone['seed_infer_clips_per_s']:.2f}x that")
        if r["amp"]:
            print(f"  bf16 vs fp32 ({r['agreement_source']}): largest |P(fake)| difference "
                  f"{r['max_abs_prob_diff']:.4f}, "
                  f"AUC fp32 {r['auc_fp32']:.4f}, bf16 {r['auc_bf16']:.4f}")
        return 0
    r = bench_preprocess(args.clips, args.workers)
    print(f"\npreprocess, {r['clips']} clips at 128x112x112 + MFCC 200x40, {r['workers']} workers")
    print(f"  seed's way : {r['seed_clips_per_s']:7.2f} clips/s   {r['seed_bytes_per_clip'] / 1e6:6.2f} MB/clip")
    print(f"  avlib      : {r['ours_clips_per_s']:7.2f} clips/s   {r['ours_bytes_per_clip'] / 1e6:6.2f} MB/clip")
    print(f"  speed-up   : {r['speedup']:.2f}x    bytes: {r['bytes_ratio']:.3f} of the seed's")
    print(f"  warm cache -> DataLoader (batch 8, {r['workers']} workers): {r['warm_cache_loader_clips_per_s']:.0f} clips/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
