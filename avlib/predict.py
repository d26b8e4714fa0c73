"""Is this video fake? Score your own files with a trained checkpoint:

    python -m avlib.predict PATH [PATH ...] --checkpoint results/demo/checkpoints/best.pt
        [--csv scores.csv] [--json scores.json] [--windows windows.csv] [--timeline FOLDER]
        [--stride SECONDS] [--max-windows N] [--threshold T] [--device cpu]

PATH may be a file or a folder (searched recursively for video files). Each video is cut into
windows of the length the model was trained on (frames / fps seconds, decoded exactly as
01_preprocess does) every `--stride` seconds (default: one window length, no overlap), up to
`--max-windows`. P(fake) of the video is the MEAN of its window probabilities (a manipulation
spanning the video raises every window, and one odd window does not decide); the MAX is
reported beside it for videos where only a part may be manipulated. The decision threshold is
the one 04_evaluate chose on validation (read from the run's metrics.json next to the
checkpoint folder) unless --threshold is given, else 0.5. Unreadable files are reported and
the rest scored; the exit status is 1 when any file failed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avlib.indexers import VIDEO_EXTENSIONS


def expand_paths(paths: list[str]) -> list[Path]:
    """Files as given, folders expanded to the video files below them (sorted)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file())
        else:
            out.append(p)
    return out


def window_starts(duration: float | None, window_seconds: float, stride: float, max_windows: int) -> list[float]:
    """Start times of the windows covering `duration` (at least one window)."""
    if not duration or duration <= window_seconds:
        return [0.0]
    n = int(np.floor((duration - window_seconds) / stride)) + 1
    return [round(i * stride, 3) for i in range(min(n, max_windows))]


def score_file(model, path: Path, cfg: dict, device, *, stride: float | None = None, max_windows: int = 32) -> pd.DataFrame:
    """One row per window: start, end, p_fake, has_audio. Raises DecodeError for unreadable files."""
    import av

    from avlib.decode import DecodeError, decode_clip
    from avlib.features import compute_mfcc
    from avlib.model import video_to_model_input

    window_seconds = cfg["frames"] / cfg["fps"]
    try:
        with av.open(str(path)) as container:
            duration = container.duration / av.time_base if container.duration else None
    except av.error.FFmpegError:
        duration = None          # decode_clip below says why the file is unreadable
    rows = []
    for start in window_starts(duration, window_seconds, stride or window_seconds, max_windows):
        clip = decode_clip(path, frames=cfg["frames"], size=cfg["size"], fps=cfg["fps"],
                           sample_rate=cfg.get("sample_rate", 16000), face_crop=cfg.get("face_crop", False),
                           offset=start)
        mfcc = compute_mfcc(clip.audio, cfg.get("sample_rate", 16000), cfg["n_mfcc"], cfg["mfcc_steps"])
        video = torch.from_numpy(np.ascontiguousarray(clip.video.transpose(3, 0, 1, 2)))[None]
        with torch.no_grad():
            logits = model(video_to_model_input(video, device), torch.from_numpy(mfcc)[None].to(device))
        rows.append({"start": start, "end": round(start + window_seconds, 3),
                     "p_fake": float(torch.softmax(logits.float(), 1)[0, 1]), "has_audio": clip.has_audio,
                     "valid_frames": clip.valid_frames})
        if clip.valid_frames < cfg["frames"]:
            break
    if not rows:
        raise DecodeError("no window could be decoded")
    return pd.DataFrame(rows)


def default_threshold(checkpoint: Path) -> float:
    metrics = checkpoint.resolve().parent.parent / "metrics.json"
    if metrics.is_file():
        return float(json.loads(metrics.read_text())["threshold"])
    return 0.5


def plot_timeline(windows: pd.DataFrame, path: Path, title: str, threshold: float) -> None:
    from avlib import plots  # noqa: F401  (sets the headless backend and the theme)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 2.8))
    mid = (windows["start"] + windows["end"]) / 2
    ax.plot(mid, windows["p_fake"], marker="o")
    ax.axhline(threshold, color="red", ls="--", lw=1, label=f"threshold {threshold:.2f}")
    ax.set(ylim=(0, 1), xlabel="seconds", ylabel="P(fake)", title=title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from tqdm.auto import tqdm

    from avlib.evaluate import load_detector
    from avlib.model import inference_model
    from avlib.runtime import tune_allocator

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="video files or folders")
    parser.add_argument("--checkpoint", required=True, type=Path, help="best.pt or last.pt written by 03_train")
    parser.add_argument("--csv", type=Path, help="write one row per video here")
    parser.add_argument("--json", type=Path, help="write the per-video results as JSON here")
    parser.add_argument("--windows", type=Path, help="write one row per window here")
    parser.add_argument("--timeline", type=Path, help="folder for one P(fake)-over-time PNG per video")
    parser.add_argument("--stride", type=float, help="seconds between window starts (default: the window length)")
    parser.add_argument("--max-windows", type=int, default=32)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    model, state = load_detector(args.checkpoint, args.device)
    cfg = state.get("preprocess")
    if not cfg:
        parser.error(f"{args.checkpoint} does not record its preprocessing settings (written by an older avlib)")
    threshold = args.threshold if args.threshold is not None else default_threshold(args.checkpoint)
    device = next(model.parameters()).device
    tune_allocator()
    model = inference_model(model)            # fp32, BatchNorm folded: same scores, less work
    results, all_windows = [], []
    for path in tqdm(expand_paths(args.paths), desc="scoring", unit="video"):
        try:
            windows = score_file(model, path, cfg, device, stride=args.stride, max_windows=args.max_windows)
        except Exception as e:  # noqa: BLE001 - one unreadable file must not stop the others; it is reported
            results.append({"path": str(path), "p_fake": np.nan, "p_fake_max": np.nan, "label": "ERROR",
                            "windows": 0, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
            continue
        p = float(windows["p_fake"].mean())
        results.append({"path": str(path), "p_fake": round(p, 4), "p_fake_max": round(float(windows["p_fake"].max()), 4),
                        "label": "FAKE" if p >= threshold else "REAL", "windows": len(windows), "error": ""})
        all_windows.append(windows.assign(path=str(path)))
        if args.timeline:
            plot_timeline(windows, args.timeline / f"{path.stem}_timeline.png", path.name, threshold)
    table = pd.DataFrame(results)
    with pd.option_context("display.max_colwidth", 60, "display.width", 160):
        print(f"threshold {threshold:.3f}")
        print(table.to_string(index=False))
    if args.csv:
        table.to_csv(args.csv, index=False)
    if args.json:
        args.json.write_text(table.to_json(orient="records", indent=2))
    if args.windows and all_windows:
        pd.concat(all_windows).to_csv(args.windows, index=False)
    return 1 if (table["label"] == "ERROR").any() else 0


if __name__ == "__main__":
    sys.exit(main())
