import pytest
import torch

from avlib.core.checkpoint import CheckpointError
from avlib.models.detector import (
    build_model,
    count_parameters,
    inference_model,
    load_video_weights,
    video_to_model_input,
)


def test_default_model_has_the_seeds_exact_parameter_count():
    assert count_parameters(build_model()) == 31_946_527


def test_forward_takes_mfcc_as_batch_steps_coefficients():
    model = build_model().eval()
    video = torch.rand(2, 3, 8, 32, 32)
    audio = torch.randn(2, 20, 40)          # (B, S, 40): the seed's loader shape, which its permute broke
    with torch.no_grad():
        out = model(video, audio)
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


def test_audio_normalisation_is_buffers_not_parameters():
    model = build_model()
    model.audio_encoder.set_normalization(torch.full((40,), 5.0), torch.full((40,), 2.0))
    assert count_parameters(model) == 31_946_527
    state = model.state_dict()
    assert torch.equal(state["audio_encoder.mfcc_mean"], torch.full((40,), 5.0))
    fresh = build_model()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.audio_encoder.mfcc_std, torch.full((40,), 2.0))


@pytest.mark.parametrize("modality", ["video", "audio"])
def test_ablation_ignores_the_other_branch(modality):
    torch.manual_seed(0)
    model = build_model(modality=modality).eval()
    video, audio = torch.rand(1, 3, 4, 16, 16), torch.randn(1, 10, 40)
    with torch.no_grad():
        base = model(video, audio)
        if modality == "video":
            changed = model(video, audio * 10 + 3)
        else:
            changed = model(torch.rand(1, 3, 4, 16, 16), audio)
    assert torch.allclose(base, changed)


def test_uint8_video_is_converted_on_the_device_to_unit_range():
    video = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1, 1).expand(1, 3, 2, 2, 2)
    out = video_to_model_input(video, torch.device("cpu"))
    assert out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert out.min() == 0 and out.max() == 1.0


def test_video_weights_load_from_a_local_file(tmp_path):
    import torchvision

    trunk = torchvision.models.video.r2plus1d_18(weights=None)
    torch.save(trunk.state_dict(), tmp_path / "r2p1d.pth")
    model = build_model(video_weights=tmp_path / "r2p1d.pth")
    got = model.video_encoder.model.stem[0].weight
    assert torch.equal(got, trunk.stem[0].weight)


def test_video_weights_of_another_shape_are_refused_without_partial_load(tmp_path):
    import torchvision

    trunk = torchvision.models.video.r2plus1d_18(weights=None)
    state = trunk.state_dict()
    state["layer4.1.conv2.0.1.weight"] = torch.zeros(3)      # wrong shape, late in the dict
    torch.save(state, tmp_path / "bad.pth")
    model = build_model()
    before = model.video_encoder.model.stem[0].weight.clone()
    with pytest.raises(ValueError, match="layer4.1.conv2.0.1.weight"):
        load_video_weights(model, tmp_path / "bad.pth")
    assert torch.equal(model.video_encoder.model.stem[0].weight, before)


def test_video_weights_file_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        build_model(video_weights=tmp_path / "junk.pth")


def _trained_tiny_model(video_encoder="r2plus1d_18"):
    """A model whose BatchNorm statistics and MFCC normalisation are not the defaults."""
    torch.manual_seed(0)
    model = build_model(video_encoder=video_encoder)
    model.audio_encoder.set_normalization(torch.randn(40), torch.rand(40) + 0.5)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    video, audio, labels = torch.rand(4, 3, 4, 16, 16), torch.randn(4, 20, 40), torch.tensor([0, 1, 0, 1])
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(video, audio), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), video, audio


@pytest.mark.parametrize("amp,tolerance,video_encoder", [(False, 1e-5, "r2plus1d_18"), (True, 0.02, "r2plus1d_18"),
                                                          (False, 1e-5, "framediff"), (True, 0.02, "framediff")])
def test_inference_copy_folds_batchnorm_and_scores_like_the_model(amp, tolerance, video_encoder):
    model, video, audio = _trained_tiny_model(video_encoder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = inference_model(model, amp=amp)
    norms = (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    assert not any(isinstance(m, norms) for m in fast.video_encoder.modules())
    assert any(isinstance(m, norms) for m in model.video_encoder.modules())      # the original keeps its BN
    with torch.no_grad():
        reference = torch.softmax(model(video, audio), 1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            scored = torch.softmax(fast(video_to_model_input(video, torch.device("cpu")), audio).float(), 1)
    assert (scored - reference).abs().max() < tolerance
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_compiled_inference_copy_scores_like_the_model():
    model, video, audio = _trained_tiny_model()
    compiled = inference_model(model, compile=True)
    with torch.no_grad():
        reference = torch.softmax(model(video, audio), 1)
        scored = torch.softmax(compiled(video, audio), 1)
    assert (scored - reference).abs().max() < 1e-4


def test_framediff_encoder_is_rebuilt_from_its_config_and_refuses_r2plus1d_weights(tmp_path):
    from avlib.models.detector import model_config, model_kwargs

    model = build_model(video_encoder="framediff")
    assert model_config(model)["video_encoder"] == "framediff"
    assert count_parameters(model.video_encoder) < 1_000_000       # vs 31 M for R(2+1)D-18
    rebuilt = build_model(**model_kwargs(model_config(model)))
    rebuilt.load_state_dict(model.state_dict())                    # same modules, same shapes
    assert model_kwargs({"n_mfcc": 40, "modality": "av"})["video_encoder"] == "r2plus1d_18"   # older checkpoints
    torch.save(build_model().video_encoder.model.state_dict(), tmp_path / "r2plus1d.pth")
    with pytest.raises(ValueError, match="video_encoder r2plus1d_18"):
        build_model(video_encoder="framediff", video_weights=tmp_path / "r2plus1d.pth")
    with pytest.raises(ValueError, match="video_encoder"):
        build_model(video_encoder="resnet")


def _flicker_clips(n, generator):
    """Clips (n, 3, 4, 16, 16) of a still random texture; in the odd ones a 5x5 patch is drawn
    afresh in every frame from the same texture statistics: no single frame shows it."""
    video = torch.rand(n, 3, 1, 16, 16, generator=generator).expand(n, 3, 4, 16, 16).clone()
    labels = torch.arange(n) % 2
    for i in range(1, n, 2):
        y, x = torch.randint(0, 11, (2,), generator=generator).tolist()
        video[i, :, :, y:y + 5, x:x + 5] = torch.rand(3, 4, 5, 5, generator=generator)
    return video, labels


def test_framediff_encoder_learns_a_flicker_that_no_single_frame_shows():
    """The difference channel is what makes the encoder see a region re-rendered frame by frame:
    trained on 64 clips, it ranks new flickering clips above still ones."""
    from sklearn.metrics import roc_auc_score

    from avlib.models.detector import FrameDiffEncoder

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    encoder = FrameDiffEncoder(out_features=1, width=8)
    optimizer = torch.optim.Adam(encoder.parameters(), 3e-3)
    video, labels = _flicker_clips(64, g)
    for step in range(60):
        batch = torch.arange(step * 16, step * 16 + 16) % 64
        loss = torch.nn.functional.binary_cross_entropy_with_logits(encoder(video[batch]).squeeze(1),
                                                                    labels[batch].float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_video, test_labels = _flicker_clips(64, g)
    with torch.no_grad():
        scores = encoder.eval()(test_video).squeeze(1)
    assert roc_auc_score(test_labels.numpy(), scores.numpy()) >= 0.9


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frames", [8, 16])      # T=2 reaches layer3 (8 frames) and layer4 (16 frames)
def test_bf16_weight_gradients_of_every_convolution_match_float64(frames, device):
    """Every Conv3d's weight gradient from a bf16-autocast training step, against the same
    gradient recomputed in float64 from the inputs and output gradients that step saw.
    Without ShortClipTemporalConv3d, the temporal convolutions over 2 frames are off by a
    relative error of about 1 (or 1e30, or NaN) on the CPU."""
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build_model().to(dev).to(memory_format=torch.channels_last_3d)
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen[name] = [module, inputs[0].detach(), None]
            output.register_hook(lambda g: seen[name].__setitem__(2, g.detach()))
        return hook

    for name, module in model.video_encoder.model.named_modules():
        if isinstance(module, torch.nn.Conv3d):
            module.register_forward_hook(keep(name))
    video = video_to_model_input(torch.randint(0, 256, (2, 3, frames, 32, 32), dtype=torch.uint8), dev)
    with torch.autocast(dev.type, dtype=torch.bfloat16):
        logits = model(video, torch.randn(2, 200, 40, device=dev))
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1], device=dev)).backward()
    assert len(seen) == 37
    errors = {}
    with torch.no_grad():
        for name, (conv, x, grad_out) in seen.items():
            ref = torch.ops.aten.convolution_backward(
                grad_out.double(), x.double(), conv.weight.double(), None, list(conv.stride), list(conv.padding),
                list(conv.dilation), False, [0, 0, 0], 1, [False, True, False])[1]
            errors[name] = float((conv.weight.grad.double() - ref).norm() / ref.norm())
    bad = {k: v for k, v in errors.items() if not v < 0.02}
    assert not bad, bad
