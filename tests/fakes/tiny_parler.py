"""Build Parler-TTS checkpoints with random weights, saved exactly like a downloaded one; read the codes
`generate()` hands its codec.

`tiny` is small enough for tests (a 1-layer T5 encoder, a 2-layer decoder) but keeps the real DAC codec
(44.1 kHz, 9 codebooks x 1024 codes) so chunking, lengths and codec cost are realistic. `mini` rebuilds the
Parler-TTS Mini v1 architecture (flan-t5-large encoder, 24-layer decoder) for benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from parler_tts import DACConfig, ParlerTTSConfig, ParlerTTSDecoderConfig, ParlerTTSForConditionalGeneration
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, T5Config

from bot.presets import JENNY_DESCRIPTION

Arch = Literal["tiny", "mini"]

CODEBOOK_SIZE = 1024
NUM_CODEBOOKS = 9
# Parler-TTS reserves 64 ids above the codebook: pad/eos = 1024, bos (decoder start) = 1025.
DECODER_VOCAB = CODEBOOK_SIZE + 64
PAD_ID = EOS_ID = CODEBOOK_SIZE
BOS_ID = CODEBOOK_SIZE + 1

VOICED_GAIN = 300.0  # brings the smoothed codec output of `build_voiced_parler` to about -19 dBFS RMS
CORPUS = [
    JENNY_DESCRIPTION,
    "It is certain. It is decidedly so. Without a doubt. Yes, definitely. You may rely on it.",
    "As I see it, yes. Most likely. Outlook good. Yes. Signs point to yes.",
    "Reply hazy, try again. Ask again later. Better not tell you now. Cannot predict now.",
    "Concentrate and ask again. Don't count on it. My reply is no. My sources say no.",
    "Outlook not so good. Very doubtful. The river does not hurry, yet it reaches the sea.",
    "A male speaker with a deep voice talks quickly in a noisy room.",
]


def train_tokenizer(corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    """Word-level tokenizer with T5's special tokens; appends `</s>` like T5 does."""
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits()])
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )


def _configs(arch: Arch, text_vocab: int) -> tuple[T5Config, ParlerTTSDecoderConfig, int]:
    """Text encoder config, decoder config and prompt-embedding vocabulary for `arch`."""
    special = {"pad_token_id": PAD_ID, "eos_token_id": EOS_ID, "bos_token_id": BOS_ID}
    if arch == "tiny":
        text = T5Config(vocab_size=text_vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
        decoder = ParlerTTSDecoderConfig(
            vocab_size=DECODER_VOCAB,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=128,
            num_codebooks=NUM_CODEBOOKS,
            max_position_embeddings=4096,
            **special,
        )
        return text, decoder, text_vocab
    # Parler-TTS Mini v1: google/flan-t5-large encoder, 24 x 1024 decoder (upstream's init_model_600M).
    text = T5Config(
        vocab_size=32128,
        d_model=1024,
        d_kv=64,
        d_ff=2816,
        num_layers=24,
        num_heads=16,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    decoder = ParlerTTSDecoderConfig(
        vocab_size=DECODER_VOCAB,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        ffn_dim=4096,
        num_codebooks=NUM_CODEBOOKS,
        max_position_embeddings=4096,
        **special,
    )
    return text, decoder, 32128


def build_parler(path: Path, arch: Arch = "tiny", seed: int = 0) -> Path:
    """Create a random-weight Parler-TTS checkpoint plus tokenizer in `path` with `save_pretrained`."""
    tokenizer = train_tokenizer()
    text, decoder, prompt_vocab = _configs(arch, len(tokenizer))
    config = ParlerTTSConfig.from_sub_models_config(
        text, DACConfig(num_codebooks=NUM_CODEBOOKS, codebook_size=CODEBOOK_SIZE), decoder, vocab_size=prompt_vocab
    )
    torch.manual_seed(seed)
    model = ParlerTTSForConditionalGeneration(config).eval()
    gen = model.generation_config
    gen.decoder_start_token_id = gen.bos_token_id = BOS_ID
    gen.pad_token_id = PAD_ID
    gen.eos_token_id = EOS_ID
    gen.max_length = 30 * 86
    gen.do_sample = True
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_voiced_parler(path: Path) -> Path:
    """A tiny random-weight Parler-TTS checkpoint whose codec output is audible and depends on the codes.

    With random weights the codec's output is a DC offset plus a tone at the Nyquist frequency, almost
    independent of the codes. This copy's codec decoder has no biases and ends in a smoothing filter with a
    speech-like level, so the audio depends on the codes and sits in the band Opus keeps.
    """
    build_parler(path)
    model = ParlerTTSForConditionalGeneration.from_pretrained(path)
    decoder = model.audio_encoder.model.decoder
    with torch.no_grad():
        for module in decoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)) and module.bias is not None:
                module.bias.zero_()
        last = decoder.model[-2].parametrizations.weight  # the 7-tap output convolution (before tanh)
        taps = last.original1.shape[-1]
        window = torch.hann_window(taps + 2)[1:-1]
        last.original1.copy_(last.original1[:, :, taps // 2 : taps // 2 + 1].sign() * window)
        last.original0.mul_(VOICED_GAIN)
    model.save_pretrained(path)
    return path


def generate_codes(model: ParlerTTSForConditionalGeneration, kwargs: dict[str, Any]) -> torch.Tensor:
    """The codes `model.generate()` hands its codec, `(frames, codebooks)` (frames with EOS or padding dropped)."""
    seen: list[torch.Tensor] = []
    original = model.audio_encoder.decode

    def spy(audio_codes: torch.Tensor, **rest: Any) -> Any:
        seen.append(audio_codes.reshape(audio_codes.shape[-2], -1).T.clone())
        return original(audio_codes=audio_codes, **rest)

    model.audio_encoder.decode = spy
    try:
        model.generate(**kwargs)
    finally:
        del model.audio_encoder.decode
    return seen[0] if seen else torch.zeros(0, 9, dtype=torch.long)
