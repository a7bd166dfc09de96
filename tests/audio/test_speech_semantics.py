"""What the checkpoint's generation config asks for, served as `generate()` serves it: sampling, EOS, caps."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from parler_tts import ParlerTTSForConditionalGeneration
from transformers import AutoTokenizer

from audio.speech.parler import seeded
from audio.speech.reference import TTSEngine
from audio.speech.rules import Rules
from audio.speech.server import SpeechServer
from tests.audio.test_speech_server import (
    FRAMES,
    MAX_FRAMES,
    SENTENCES,
    VOICES,
    WAIT,
    Run,
    eos_biased,
    frames,
    generate_codes,
    make_server,
    silent_decode,
    solo,
    start,
    tiny_config,
)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def engines(
    model: ParlerTTSForConditionalGeneration, path: Path, *, sample: bool = True, max_batch: int = 2
) -> tuple[SpeechServer, TTSEngine]:
    """The server (fp32, `max_frames` cap) and the reference engine on the same model."""
    config = tiny_config(path, max_frames=MAX_FRAMES, cpu_path="fp32", max_batch=max_batch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    server = SpeechServer(config, model, tokenizer, do_sample=sample, decode=silent_decode)
    return server, TTSEngine(config, model, tokenizer)


def generated(reference: TTSEngine, text: str, voice: Any, sample: bool = True) -> torch.Tensor:
    """`generate()`'s codes for one sentence, seeded like the server seeds the row (capped like the server)."""
    kwargs = {**reference.generate_kwargs(text, voice), "do_sample": sample, "max_new_tokens": MAX_FRAMES + 8}
    with seeded(voice.seed, reference.device):
        return generate_codes(reference.model, kwargs)


def test_sampled_batch_1_equals_generate(tiny_parler_dir: Path) -> None:
    server = make_server(tiny_parler_dir, sample=True)
    reference = TTSEngine.load(tiny_config(tiny_parler_dir), frames_per_sentence=FRAMES)
    try:
        for text, voice in zip(SENTENCES[:3], VOICES, strict=True):
            with seeded(voice.seed, reference.device):
                expected = generate_codes(reference.model, reference.generate_kwargs(text, voice))
            assert expected.shape == (FRAMES, 9)
            assert torch.equal(solo(server, text, voice), expected)
    finally:
        server.close()


def test_the_checkpoints_temperature_top_p_and_min_new_tokens_reach_both_engines(tiny_parler_dir: Path) -> None:
    model = eos_biased(tiny_parler_dir, 0.5)
    generation = model.generation_config
    generation.temperature, generation.top_p, generation.min_new_tokens = 0.7, 0.9, 20
    server, reference = engines(model, tiny_parler_dir)
    try:
        rules = server.rules
        assert (rules.temperature, rules.top_p, rules.min_new_tokens) == (0.7, 0.9, 20)
        kwargs = reference.generate_kwargs(SENTENCES[0], VOICES[0])
        assert (kwargs["temperature"], kwargs["min_new_tokens"]) == (0.7, 20)
        lengths = []
        for text, voice in zip(SENTENCES, VOICES * 2, strict=False):
            expected = generated(reference, text, voice)
            lengths.append(len(expected))
            assert torch.equal(solo(server, text, voice), expected)
        assert 20 - 9 <= min(lengths) < MAX_FRAMES  # no EOS before 20 tokens, and EOS ended some sentences
    finally:
        server.close()


def test_unset_min_new_tokens_and_temperature_are_the_demos(tiny_parler_dir: Path) -> None:
    model = ParlerTTSForConditionalGeneration.from_pretrained(tiny_parler_dir).eval()
    model.generation_config.temperature = model.generation_config.min_new_tokens = None
    server, reference = engines(model, tiny_parler_dir)
    server.close()
    assert (server.rules.temperature, server.rules.min_new_tokens) == (1.0, 10)
    kwargs = reference.generate_kwargs(SENTENCES[0], VOICES[0])
    assert (kwargs["temperature"], kwargs["min_new_tokens"]) == (1.0, 10)


def test_rows_end_at_different_steps_and_a_row_joins_mid_batch(
    tiny_parler_dir: Path, pool: ThreadPoolExecutor, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = eos_biased(tiny_parler_dir, 0.5)
    server, _ = engines(model, tiny_parler_dir, sample=False, max_batch=4)
    answers = list(zip(SENTENCES[:4], VOICES + VOICES[:1], strict=True))
    try:
        expected = [solo(server, text, voice) for text, voice in answers]
        assert len({len(codes) for codes in expected[:3]}) > 1  # the first three end at different steps
        loop = server.loop
        submitted = threading.Condition()
        count = 0
        submit, step = loop.submit, loop.runner

        def counted(request: Any) -> None:
            nonlocal count
            submit(request)
            with submitted:
                count += 1
                submitted.notify_all()

        active: list[int] = []
        joiner: list[Run] = []

        def runner(*args: Any) -> torch.Tensor:
            if not active:  # the first step waits for the three answers: they share the batch from the next one
                with submitted:
                    assert submitted.wait_for(lambda: count >= 3, WAIT)
            if len(active) == 5:  # mid-batch: the fourth answer joins rows that are under way
                joiner.append(start(pool, server, *answers[3]))
                with submitted:
                    assert submitted.wait_for(lambda: count >= 4, WAIT)
            active.append(loop.active)
            return step(*args)

        monkeypatch.setattr(loop, "submit", counted)
        monkeypatch.setattr(loop, "runner", runner)
        runs = [start(pool, server, text, voice) for text, voice in answers[:3]]
        for run in runs:
            run.result()
        assert joiner, "the batch ended before the fourth answer could join"
        for run, codes in zip(runs + joiner, expected, strict=True):
            assert run.result().error is None
            assert torch.equal(frames(run), codes)
        assert active[1:6] == [3] * 5 and active[6] == 4  # three rows, then four in the same batch
    finally:
        server.close()


@pytest.mark.parametrize("sample", [False, True])
def test_max_frames_caps_a_sentence_that_may_still_end_with_eos(tiny_parler_dir: Path, sample: bool) -> None:
    model = eos_biased(tiny_parler_dir, 0.0)
    with torch.no_grad():  # EOS allowed but never among the best logits: the cap ends the sentence
        for head in model.decoder.lm_heads:
            head.weight[model.generation_config.eos_token_id] = 0
    server, reference = engines(model, tiny_parler_dir, sample=sample)
    try:
        assert not server.rules.audio_only
        for text, voice in zip(SENTENCES[:2], VOICES, strict=False):
            expected = generated(reference, text, voice, sample)
            assert expected.shape == (MAX_FRAMES, 9)
            assert torch.equal(solo(server, text, voice), expected)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("repetition_penalty", 1.2),
        ("guidance_scale", 3.0),
        ("typical_p", 0.9),
        ("min_p", 0.05),
        ("suppress_tokens", [5]),
    ],
)
def test_settings_the_loop_does_not_implement_are_refused_at_load(tiny_parler_dir: Path, name: str, value: Any) -> None:
    model = ParlerTTSForConditionalGeneration.from_pretrained(tiny_parler_dir).eval()
    setattr(model.generation_config, name, value)
    sentence = rf"^The checkpoint's generation config sets {name}=.*does not implement\.$"
    with pytest.raises(ValueError, match=sentence):
        engines(model, tiny_parler_dir)
    with pytest.raises(ValueError, match=sentence):
        Rules.of(model, frames_per_sentence=None, max_frames=None, do_sample=True)
    reference = TTSEngine.load(tiny_config(tiny_parler_dir), frames_per_sentence=FRAMES)
    with pytest.raises(ValueError, match="does not implement"):
        TTSEngine(reference.config, model, reference.tokenizer)


def test_neutral_values_of_those_settings_load(tiny_parler_dir: Path) -> None:
    model = ParlerTTSForConditionalGeneration.from_pretrained(tiny_parler_dir).eval()
    generation = model.generation_config
    generation.repetition_penalty, generation.guidance_scale, generation.suppress_tokens = 1.0, 1.0, []
    assert Rules.of(model, frames_per_sentence=None, max_frames=None, do_sample=True).temperature == 1.0
