"""The CPU decoding path chosen at load: candidates, accuracy checks, fallbacks and the forcing setting."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from parler_tts import ParlerTTSForConditionalGeneration

from audio.speech import TTSConfig
from audio.speech import cpu_path as cpu
from audio.speech.decoder import ParlerDecoder
from audio.speech.parler import PackedLinear
from audio.speech.server import SpeechServer
from tests.audio.test_speech_server import FRAMES, answer, silent_decode, solo, tiny_config

pytestmark = pytest.mark.timeout(180)

FAKE_MS = {"fp32": 10.0, "packed": 8.0, "int8": 5.0, "bf16": 6.0}


@pytest.fixture
def model(tiny_parler_dir: Path) -> ParlerTTSForConditionalGeneration:
    return ParlerTTSForConditionalGeneration.from_pretrained(tiny_parler_dir).eval()


@pytest.fixture
def every_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 counts as native and timing is scripted (`FAKE_MS`), so the choice is the same on any machine."""
    monkeypatch.setattr(cpu, "native_bf16", lambda: True)
    monkeypatch.setattr(cpu, "time_steps", lambda decoders: {name: FAKE_MS[name] for name in decoders})


def fc1(model: ParlerTTSForConditionalGeneration) -> torch.nn.Module:
    return model.decoder.model.decoder.layers[0].fc1


def choose(model: ParlerTTSForConditionalGeneration, path: str = "auto", quantize: str = "int8") -> cpu.PathChoice:
    config = TTSConfig(model="unused", device="cpu", cpu_path=path, quantize=quantize)  # type: ignore[arg-type]
    return cpu.choose_cpu_path(model, config, max_batch=4)


@pytest.mark.usefixtures("every_path")
def test_auto_keeps_the_fastest_path_whose_logits_stay_close_to_fp32(
    model: ParlerTTSForConditionalGeneration,
) -> None:
    choice = choose(model)
    assert choice.path == "int8" and not choice.forced
    assert choice.step_ms == FAKE_MS and choice.speedup == 2.0
    assert set(choice.cosine) == {"int8", "bf16"} and min(choice.cosine.values()) >= cpu.MIN_COSINE
    assert type(fc1(model)).__module__.startswith("torch.ao.nn.quantized")
    line = choice.describe()
    assert "int8 (measured)" in line and "fp32 10.0, packed 8.0, int8 5.0, bf16 6.0" in line
    assert choice.seconds is not None and line.endswith(f"; chosen in {choice.seconds:.1f} s")


@pytest.mark.usefixtures("every_path")
def test_paths_whose_logits_drift_are_dropped_with_the_reason(
    model: ParlerTTSForConditionalGeneration, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "MIN_COSINE", 1.01)  # no lossy path can pass
    choice = choose(model)
    assert choice.path == "packed" and isinstance(fc1(model), PackedLinear)
    assert set(choice.rejected) == {"int8", "bf16"} and "under 1.01" in choice.rejected["int8"]
    assert "int8 not used: logits cosine" in choice.describe()


@pytest.mark.usefixtures("every_path")
def test_without_int8_allowed_int8_is_not_a_candidate(model: ParlerTTSForConditionalGeneration) -> None:
    choice = choose(model, quantize="none")
    assert choice.path == "bf16" and set(choice.step_ms) == {"fp32", "packed", "bf16"}
    assert fc1(model).weight.dtype == torch.bfloat16


@pytest.mark.parametrize("path", ["auto", "packed"])
def test_a_packed_layer_that_differs_from_f_linear_falls_back_to_nn_linear(
    model: ParlerTTSForConditionalGeneration, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    original = model.decoder
    monkeypatch.setattr(cpu, "native_bf16", lambda: False)
    forward = PackedLinear.forward
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: forward(self, x) * 1.01)
    choice = choose(model, path, quantize="none")
    assert choice.path == "fp32" and model.decoder is original
    assert type(fc1(model)) is torch.nn.Linear
    assert "differs from F.linear" in choice.rejected["packed"]
    assert "packed not used: oneDNN's packed" in choice.describe()


def test_missing_onednn_kernels_fall_back_with_the_reason(
    model: ParlerTTSForConditionalGeneration, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "can_pack", lambda module: False)
    choice = choose(model, "packed")
    assert choice.path == "fp32" and "no oneDNN" in choice.rejected["packed"]


@pytest.mark.parametrize(
    ("path", "kind"),
    [("fp32", torch.nn.Linear), ("packed", PackedLinear), ("int8", None), ("bf16", torch.nn.Linear)],
)
def test_a_forced_path_is_used_without_timing(
    model: ParlerTTSForConditionalGeneration, monkeypatch: pytest.MonkeyPatch, path: str, kind: type | None
) -> None:
    def untimed(decoders: Any) -> None:
        raise AssertionError("a forced path is not timed")

    monkeypatch.setattr(cpu, "time_steps", untimed)
    original = model.decoder
    choice = choose(model, path, quantize="none")
    assert (choice.path, choice.forced, choice.step_ms, choice.rejected) == (path, True, {}, {})
    layer = fc1(model)
    if kind is None:
        assert type(layer).__module__.startswith("torch.ao.nn.quantized")
    else:
        assert type(layer) is kind
    assert (model.decoder is original) == (path == "fp32")  # fp32 is the model as loaded
    expected_dtype = torch.bfloat16 if path == "bf16" else torch.float32
    assert next(model.decoder.model.decoder.layer_norm.parameters()).dtype == expected_dtype
    assert next(original.parameters()).dtype == torch.float32  # copies never convert the loaded weights


@pytest.mark.parametrize("path", ["bf16", "int8"])
def test_a_server_on_a_lossy_path_speaks(tiny_parler_dir: Path, path: str) -> None:
    config = tiny_config(tiny_parler_dir, max_batch=2, cpu_path=path)
    server = SpeechServer.load(config, frames_per_sentence=FRAMES, decode=silent_decode)
    try:
        assert server.cpu_path is not None and server.cpu_path.path == path
        assert len(solo(server, *answer(0))) == FRAMES
    finally:
        server.close()


def test_the_server_logs_one_line_with_the_choice(tiny_parler_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = SpeechServer.load(tiny_config(tiny_parler_dir, max_batch=2), frames_per_sentence=FRAMES)
    server.close()
    lines = [record.getMessage() for record in caplog.records if "CPU decoding path" in record.getMessage()]
    assert len(lines) == 1 and server.cpu_path is not None
    assert lines[0].startswith(f"CPU decoding path: {server.cpu_path.path} (measured); step ms at batch 1: fp32 ")


def test_real_timing_covers_every_decoder(model: ParlerTTSForConditionalGeneration) -> None:
    decoders = {
        name: ParlerDecoder(model, rows=1, length=64, context=16, layers=cpu.build_path(model.decoder, name, 2))
        for name in ("fp32", "packed")
    }
    times = cpu.time_steps(decoders, rounds=1)
    assert set(times) == {"fp32", "packed"} and all(0 < ms < float("inf") for ms in times.values())


def test_native_bf16_reads_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert not cpu.native_bf16(cpuinfo)
    for flag in ("avx512_bf16", "amx_bf16"):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu avx2 {flag}\n")
        assert cpu.native_bf16(cpuinfo)
    assert not cpu.native_bf16(tmp_path / "missing")


def test_cpu_settings_are_refused_on_a_gpu() -> None:
    gpu_model: Any = SimpleNamespace(device=torch.device("cuda"))
    for options in ({"cpu_path": "int8"}, {"quantize": "int8"}):
        config = TTSConfig(model="unused", **options)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="are for the CPU"):
            cpu.choose_cpu_path(gpu_model, config, max_batch=8)


def test_the_setting_reaches_the_engine_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from audio.serve import ServeSettings
    from bot.settings import Settings

    monkeypatch.setenv("TTS_CPU_PATH", "bf16")
    assert Settings().tts_config().cpu_path == "bf16"
    assert ServeSettings().tts_config().cpu_path == "bf16"  # the Ray Serve app's replicas too


def test_fused_projections_compute_what_the_separate_layers_do(model: ParlerTTSForConditionalGeneration) -> None:
    fused = cpu.build_path(model.decoder, "packed", 2)
    attention = fused.model.decoder.layers[0].self_attn
    assert isinstance(attention.qkv_proj, PackedLinear) and not hasattr(attention, "q_proj")
    assert isinstance(fused.lm_heads, PackedLinear)  # all codebooks' heads in one product
    assert hasattr(model.decoder.model.decoder.layers[0].self_attn, "q_proj")  # the loaded model keeps its layers
    traces = [
        cpu.logits_trace(ParlerDecoder(model, rows=1, length=64, context=16, layers=layers), model, None)
        for layers in (model.decoder, fused)
    ]
    torch.testing.assert_close(traces[1], traces[0], rtol=1e-4, atol=1e-4)


def test_a_decoder_loaded_in_another_dtype_runs_as_loaded(model: ParlerTTSForConditionalGeneration) -> None:
    model.decoder.to(torch.bfloat16)
    original = model.decoder
    choice = choose(model)
    assert model.decoder is original and choice.describe() == "CPU decoding path: bfloat16 (as loaded)"


@pytest.mark.usefixtures("every_path")
def test_a_path_that_fails_in_a_step_is_dropped_with_the_reason(
    model: ParlerTTSForConditionalGeneration, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Any, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("no kernel for this processor")

    monkeypatch.setattr(PackedLinear, "forward", broken)
    monkeypatch.setattr(cpu, "_check_packed", lambda *args: None)  # it built; only running a step fails
    choice = choose(model)
    assert choice.path == "int8" and choice.rejected == {"packed": "no kernel for this processor"}
    assert "packed" not in choice.step_ms
