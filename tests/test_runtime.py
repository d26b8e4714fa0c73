"""Allocator settings: freed activation memory is reused instead of page-faulted in again; and
amp: auto, bf16 only on hardware that computes in it."""
import subprocess
import sys

import pytest

# R(2+1)D at 16x64x64, batch 4, fp32: activations of up to 33 MB, above glibc's largest default
# mmap threshold, so by default each forward pass page-faults in about 1 GB (~240k pages).
PROBE = """
import resource, sys
import torch
if sys.argv[1] == "tuned":
    from avlib.core.runtime import tune_allocator
    assert tune_allocator() and tune_allocator()          # idempotent
from avlib.models.detector import build_model
torch.manual_seed(0)
model = build_model().eval()
video, audio = torch.rand(4, 3, 16, 64, 64), torch.randn(4, 20, 40)
faults = []
with torch.no_grad():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(video, audio)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_tuned_allocator_reuses_activation_memory_between_passes():
    def worst_fault_count(mode):
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.strip().splitlines()[-1])

    default, tuned = worst_fault_count("default"), worst_fault_count("tuned")
    assert tuned < 20_000, (tuned, default)        # under 80 MB of fresh pages per pass once warm
    assert tuned < default / 5, (tuned, default)


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse avx avx2 fma\n"
AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"


@pytest.mark.parametrize("cpuinfo,auto,why", [
    (AVX2_ONLY, False, "this CPU has no avx512_bf16 or amx_bf16"),
    (AVX512_BF16, True, "this CPU has avx512_bf16"),
    ("flags\t\t: avx2 amx_bf16 amx_tile\n", True, "this CPU has amx_bf16"),
    (None, False, "this CPU has no avx512_bf16 or amx_bf16"),          # no /proc/cpuinfo (macOS, Windows)
], ids=["avx2", "avx512_bf16", "amx", "no-cpuinfo"])
def test_amp_auto_takes_bf16_only_on_a_cpu_that_computes_in_it(tmp_path, cpuinfo, auto, why):
    from avlib.core.runtime import resolve_amp

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    said = []
    assert resolve_amp("auto", "cpu", cpuinfo=path, log=said.append) is auto
    assert said == [f"precision: {'bf16 autocast' if auto else 'fp32'} (amp: auto, {why})"]
    assert resolve_amp(False, "cpu", cpuinfo=path) is False
    assert resolve_amp(True, "cpu", cpuinfo=path, log=said.append) is True
    assert said[-1].startswith("warning: amp: true, but this CPU") is not auto     # asked for emulated bf16


@pytest.mark.parametrize("cpuinfo,units", [
    ("model name\t: AMD EPYC\n" + AVX2_ONLY, "AMD EPYC, AVX2, no AVX-512"),
    (AVX512_BF16, "AVX-512 with bf16"),
    ("flags\t\t: avx2 avx512f\n", "AVX-512, no bf16"),
    (None, "instruction set unknown"),
], ids=["avx2", "avx512_bf16", "avx512", "no-cpuinfo"])
def test_cpu_description_says_whether_it_has_avx512_and_bf16(tmp_path, cpuinfo, units):
    """What the reference's spread.json records beside its figures (they depend on it)."""
    from avlib.core.runtime import cpu_description

    path = tmp_path / "cpuinfo"
    if cpuinfo is not None:
        path.write_text(cpuinfo)
    assert cpu_description(path).endswith(units)


@pytest.mark.parametrize("bf16", [True, False])
def test_amp_auto_on_cuda_follows_the_gpu(monkeypatch, bf16):
    import torch

    from avlib.core.runtime import resolve_amp

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Some GPU")
    assert resolve_amp("auto", "cuda", cpuinfo="/nonexistent") is bf16


@pytest.mark.parametrize("value", ["yes", 1, None, "Auto"])
def test_amp_accepts_only_true_false_or_auto(value):
    from avlib.core.errors import ParameterError
    from avlib.core.params import amp as check_amp
    from avlib.core.runtime import resolve_amp

    check_amp("amp", True), check_amp("amp", False), check_amp("amp", "auto")
    with pytest.raises(ParameterError, match="`amp` must be true, false or auto"):
        check_amp("amp", value)
    with pytest.raises(ParameterError, match="`amp`"):
        resolve_amp(value, "cpu")
