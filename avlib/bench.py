"""Benchmarks that print figures (not timed tests):

    python -m avlib.bench preprocess [--clips 120] [--workers 2]
    python -m avlib.bench train [--frames 16] [--size 64] [--batch 8] [--steps 6]

preprocess: the same clips processed two ways in one run. The seed's way: OpenCV frame reads
resized to 112x112, audio extracted to WAV by an ffmpeg process and loaded by librosa (22.05 kHz),
MFCC, float32 .npy files, one process. Ours: avlib.preprocess (PyAV single pass, uint8 cache,
`workers` processes). Then a warm-cache DataLoader read of our cache. Clips are synthetic
talking faces of 224x224 at 25 fps, 6 s long, encoded H.264/AAC.

train: the seed's loop (fp32, default memory format, float32 video from the loader) and ours
(bf16 autocast for the video encoder, channels_last_3d, uint8 video converted on the device)
at the same reduced configuration in one process: training and inference clips/s and their
ratio, then the largest |P(fake)| difference between bf16 and fp32 inference on the same clips
and the AUC of each (on the clips of --cache with the weights of --checkpoint when given).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def seed_preprocess(paths: list[Path], out_dir: Path, frames: int = 128, size: int = 112, n_mfcc: int = 40,
                    steps: int = 200) -> int:
    """The seed notebook's pipeline, as its text describes it; returns bytes written."""
    import cv2
    import imageio_ffmpeg
    import librosa

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
    from avlib.indexers import index_dataset
    from avlib.preprocess import preprocess, settings
    from avlib.synthetic import CorpusSpec, generate_corpus

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

        import torch   # only now: with torch loaded, the decoding pool would use a fork server

        from avlib.data import CachedClips, make_loader

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


def _time_steps(step, steps: int) -> float:
    step()                                    # warm-up (allocations, oneDNN kernel selection)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def bench_train(frames: int, size: int, batch: int, steps: int, checkpoint: str | None, cache_dir: str | None) -> dict:
    import torch

    from avlib.model import build_model, video_to_model_input
    from avlib.train import safe_auc

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    video_u8 = torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8)
    video_f32 = video_u8.float() / 255.0                      # what the seed's loader yields
    audio = torch.randn(batch, 200, 40)
    labels = torch.randint(0, 2, (batch,))
    out = {"frames": frames, "size": size, "batch": batch}
    for name, amp, channels_last in (("seed", False, False), ("ours", True, True)):
        model = build_model()
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        optimizer = torch.optim.Adam(model.parameters(), 1e-4)

        def train_step():
            video = video_to_model_input(video_u8, cpu, channels_last=True) if channels_last else video_f32
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(video, audio)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        @torch.no_grad()
        def infer_step():
            video = video_to_model_input(video_u8, cpu, channels_last=True) if channels_last else video_f32
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                model(video, audio)

        model.train()
        out[f"{name}_train_clips_per_s"] = batch / _time_steps(train_step, steps)
        model.eval()
        out[f"{name}_infer_clips_per_s"] = batch / _time_steps(infer_step, steps)
    out["train_speedup"] = out["ours_train_clips_per_s"] / out["seed_train_clips_per_s"]
    out["infer_speedup"] = out["ours_infer_clips_per_s"] / out["seed_infer_clips_per_s"]

    # bf16 vs fp32 agreement on the same clips and weights
    if checkpoint and cache_dir:
        from avlib.data import CachedClips, make_loader
        from avlib.evaluate import load_detector

        model, _ = load_detector(checkpoint, "cpu")
        loader = make_loader(CachedClips(cache_dir, "test"), batch_size=batch, train=False)
        source = f"{checkpoint} on the test split of {cache_dir}"
    else:
        from avlib.data import RandomClips
        from torch.utils.data import DataLoader

        model = build_model().eval()
        loader = DataLoader(RandomClips(64, frames, size), batch_size=batch)
        source = "untrained weights on random clips (pass --checkpoint and --cache for a trained model)"
    probs = {False: [], True: []}
    labels_all = []
    with torch.no_grad():
        for video, mfcc, y in loader:
            labels_all.append(y)
            for amp in (False, True):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                    logits = model(video_to_model_input(video, cpu), mfcc).float()
                probs[amp].append(torch.softmax(logits, 1)[:, 1])
    p32, p16, y = torch.cat(probs[False]), torch.cat(probs[True]), torch.cat(labels_all).numpy()
    out.update({"agreement_source": source, "max_abs_prob_diff": float((p32 - p16).abs().max()),
                "auc_fp32": safe_auc(y, p32.numpy()), "auc_bf16": safe_auc(y, p16.numpy())})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["preprocess", "train"])
    parser.add_argument("--clips", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--checkpoint", help="a trained best.pt, for the bf16/fp32 agreement")
    parser.add_argument("--cache", help="the cache that checkpoint was trained on")
    args = parser.parse_args(argv)
    if args.what == "train":
        r = bench_train(args.frames, args.size, args.batch, args.steps, args.checkpoint, args.cache)
        print(f"\ntraining loop at {r['frames']}x{r['size']}x{r['size']}, batch {r['batch']}, CPU")
        print(f"  seed's loop (fp32, contiguous, float32 loader): train {r['seed_train_clips_per_s']:6.2f} clips/s   "
              f"infer {r['seed_infer_clips_per_s']:6.2f} clips/s")
        print(f"  ours (bf16 autocast, channels_last_3d, uint8):   train {r['ours_train_clips_per_s']:6.2f} clips/s   "
              f"infer {r['ours_infer_clips_per_s']:6.2f} clips/s")
        print(f"  speed-up: train {r['train_speedup']:.2f}x, inference {r['infer_speedup']:.2f}x")
        print(f"  bf16 vs fp32 ({r['agreement_source']}): largest |P(fake)| difference {r['max_abs_prob_diff']:.4f}, "
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
