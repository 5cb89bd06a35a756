"""Precision resolution: train.amp 'auto' picks bf16 only where the CPU computes it natively."""

from __future__ import annotations

import pytest
import torch

from stackgan.runtime import cpu_has_native_bf16, resolve_amp

ZEN3 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma\n"
ZEN4 = "processor\t: 0\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE = "processor\t: 0\nflags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n"


@pytest.mark.parametrize(("text", "native"), [(ZEN3, False), (ZEN4, True), (SAPPHIRE, True)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, text, native):
    info = tmp_path / "cpuinfo"
    info.write_text(text)
    assert cpu_has_native_bf16(info) is native
    assert resolve_amp("auto", torch.device("cpu"), info) == ("bf16" if native else "fp32")


def test_explicit_precisions_are_kept_and_unreadable_cpuinfo_means_fp32(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN3)
    for amp in ("fp32", "bf16", "fp16"):
        assert resolve_amp(amp, torch.device("cpu"), info) == amp
    missing = tmp_path / "absent"
    assert cpu_has_native_bf16(missing) is False
    assert resolve_amp("auto", torch.device("cpu"), missing) == "fp32"
