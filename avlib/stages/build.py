"""02_build_model: the detector for the cached clip shapes, checked with one forward pass."""
from __future__ import annotations

import torch

from avlib.core.errors import MissingInputError, ParameterError
from avlib.core.paths import portable, read_json, resolve, run_dir, write_json
from avlib.core.runtime import pick_device
from avlib.dataio.cache import has_waveform, read_manifest
from avlib.models.detector import build_model, count_parameters, model_kwargs, video_to_model_input
from avlib.stages.common import locate_cache, need, stage


@stage("02_build_model")
def build_model_stage(p, *, batch_size: int = 2):
    """Build the detector for the cached clip shapes, run one forward pass on a batch of
    `batch_size` random clips of those shapes, and write results/<run_name>/model.json.
    Returns (model, summary).

    fusion='sync' adds the sync branch (avlib.models.sync); it needs a cache with waveforms and
    a frame rate that follows lips (ParameterError naming `fps` or `frames` otherwise)."""
    cache = locate_cache(p.results_dir, p.run_name, p.cache_dir)
    manifest = read_manifest(cache)
    if p.fusion == "sync" and not has_waveform(manifest):
        raise MissingInputError(f"fusion sync reads each clip's waveform, which the cache at {portable(cache)} does "
                                f"not keep (made before 2026-11-29): rerun notebooks/01_preprocess.ipynb into a new "
                                f"cache_dir")
    if p.trunk_stride > manifest["frames"]:
        raise ParameterError(f"parameter `trunk_stride` ({p.trunk_stride}) is larger than the clip's "
                             f"{manifest['frames']} frames")
    weights = str(resolve(p.video_weights)) if p.video_weights else ""
    sync_init = str(resolve(p.sync_weights)) if p.sync_weights else ""
    model = build_model(n_mfcc=manifest["n_mfcc"], modality=p.modality, video_weights=weights or None,
                        fusion=p.fusion, fps=manifest["fps"], frames=manifest["frames"], trunk_stride=p.trunk_stride,
                        sample_rate=manifest.get("sample_rate", 16000), sync_weights=sync_init or None,
                        video_encoder=p.video_encoder, video_head=p.video_head)
    dev = pick_device(p.device)
    model.to(dev).eval()
    video = torch.randint(0, 256, (batch_size, 3, manifest["frames"], manifest["size"], manifest["size"]),
                          dtype=torch.uint8)
    audio = torch.randn(batch_size, manifest["mfcc_steps"], manifest["n_mfcc"])
    extra = []
    if p.fusion == "sync":
        n_samples = int(round(manifest["frames"] / manifest["fps"] * manifest.get("sample_rate", 16000)))
        extra = [0.1 * torch.randn(batch_size, n_samples, device=dev)]
    with torch.no_grad():
        logits = model(video_to_model_input(video, dev), audio.to(dev), *extra)
    parts = [("video_encoder", model.video_encoder), ("audio_encoder", model.audio_encoder),
             ("classifier", model.classifier)] + ([("sync", model.sync)] if p.fusion == "sync" else [])
    summary = {
        "n_mfcc": manifest["n_mfcc"], "modality": p.modality, "video_encoder": p.video_encoder,
        "video_head": p.video_head, "video_weights": p.video_weights,
        "fusion": p.fusion, "trunk_stride": p.trunk_stride, "sync_weights": p.sync_weights,
        "fps": manifest["fps"], "frames": manifest["frames"], "sample_rate": manifest.get("sample_rate", 16000),
        "parameters": count_parameters(model),
        "parameters_by_part": {name: count_parameters(part) for name, part in parts},
        "video_input": ["B", 3, manifest["frames"], manifest["size"], manifest["size"]],
        "audio_input": ["B", manifest["mfcc_steps"], manifest["n_mfcc"]],
        "output": list(logits.shape[1:]),
    }
    if p.fusion == "sync":
        summary["sync_offsets"] = model.sync.k
        summary["waveform_input"] = ["B", extra[0].shape[1]]
    write_json(run_dir(p.results_dir, p.run_name) / "model.json", summary)
    return model, summary


def model_from_run(results_dir: str, run_name: str):
    """(model, model.json) as 02_build_model described the run's model; MissingInputError before 02 ran."""
    spec = read_json(need(resolve(results_dir) / run_name / "model.json", "model.json", "02_build_model"))
    weights = str(resolve(spec["video_weights"])) if spec.get("video_weights") else None
    sync_init = str(resolve(spec["sync_weights"])) if spec.get("sync_weights") else None
    return build_model(**model_kwargs(spec), video_weights=weights, sync_weights=sync_init), spec
