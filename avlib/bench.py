"""Benchmarks that print figures (not timed tests):

    python -m avlib.bench preprocess [--clips 24] [--workers 2]

preprocess: the same clips processed two ways in one run. The seed's way: OpenCV frame reads
resized to 112x112, audio extracted to WAV by an ffmpeg process and loaded by librosa (22.05 kHz),
MFCC, float32 .npy files, one process. Ours: avlib.preprocess (PyAV single pass, uint8 cache,
`workers` processes). Then a warm-cache DataLoader read of our cache. Clips are synthetic
talking faces of 224x224 at 25 fps, 6 s long, encoded H.264/AAC.
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
    import torch

    from avlib.data import CachedClips, make_loader
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["preprocess", "all"])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    r = bench_preprocess(args.clips, args.workers)
    print(f"\npreprocess, {r['clips']} clips at 128x112x112 + MFCC 200x40, {r['workers']} workers")
    print(f"  seed's way : {r['seed_clips_per_s']:7.2f} clips/s   {r['seed_bytes_per_clip'] / 1e6:6.2f} MB/clip")
    print(f"  avlib      : {r['ours_clips_per_s']:7.2f} clips/s   {r['ours_bytes_per_clip'] / 1e6:6.2f} MB/clip")
    print(f"  speed-up   : {r['speedup']:.2f}x    bytes: {r['bytes_ratio']:.3f} of the seed's")
    print(f"  warm cache -> DataLoader (batch 8, {r['workers']} workers): {r['warm_cache_loader_clips_per_s']:.0f} clips/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
