"""Checks of the speech server's GPU path on the tiny random-weight model, for a first (and maybe only) GPU run.

    python -m bench.gpu_smoke                      # on CUDA: the first step of `bench/gpu.sh run`
    python -m bench.gpu_smoke --device cpu --json  # every check that needs no CUDA (the test suite runs this)

Each check prints one JSON line as it finishes (a timeout still leaves the finished ones), and a failing check
never stops the others; the last line is one JSON object with every check and `ok`. The exit status is 0 when
all passed. On a CPU the graph path runs through `ReplayCapture` (a stand-in for CUDA graphs whose replay re-runs
the step into the captured output), so bucket keys, static input buffers, full-context attention and output
aliasing are checked without a GPU; what needs CUDA (sync debug mode, the codec's stream, device memory) is
reported as skipped.

- `setup`: the tiny checkpoint built and loaded (fp32, and a bf16 copy).
- `versions`: Python, torch, CUDA, the libraries, the device, bf16 support.
- `host_sync`: the aten ops `decoder.step` runs that make the host wait (`_local_scalar_dense`, `nonzero`,
  `masked_select`, boolean indexing, …), seen by a `TorchDispatchMode`; on CUDA also one graph replay (and the
  eager step) under `torch.cuda.set_sync_debug_mode("error")`.
- `graphs`: capture time; greedy codes of graph replays equal to the eager step's (fp32, TF32 off).
- `generate`: greedy and sampled batch-1 codes equal to `model.generate()`'s with the same seed.
- `staggered`: 8 answers joining one after another, 3 of them cancelled: all end, the others whole.
- `codec`: the production codec path (on CUDA its own stream) at ≥ 60 dB SNR against one full decode, finite.
- `bf16`: the tiny server in bf16 speaks (finite audio); its logits (graphs) against the math SDPA backend,
  cosine ≥ 0.999, and against fp32 (reported); the SDPA kernel chosen.
- `steps`: step ms at batch 1, 8 and 32 (bf16) and peak memory (`max_memory_allocated` on CUDA).
- `close`: `close()` returns with an answer in flight, in a subprocess that must exit.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from parler_tts import ParlerTTSForConditionalGeneration
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode

from audio.speech import JENNY_DESCRIPTION, TTSConfig, TTSError, Voice
from audio.speech.graphs import Replay
from audio.speech.parler import decode_codes, fold_weight_norm, load_parler, seeded
from audio.speech.reference import TTSEngine
from audio.speech.server import SpeechServer
from bench.tts_serve import step_ms
from bench.tts_stream import snr_db
from tests.fakes.tiny_parler import build_parler, generate_codes

FRAMES = 24  # per sentence (0.28 s): exact lengths, every id masked to the codebook
SENTENCES = ["It is certain.", "Outlook not so good.", "Ask again later!", "Most likely.", "Very doubtful."]
DEEP = "A male speaker with a deep voice talks quickly in a noisy room."
VOICES = [Voice(JENNY_DESCRIPTION, 7), Voice(DEEP, 3), Voice(JENNY_DESCRIPTION, 11)]
WAIT = 120.0  # seconds for any one answer or subprocess
SNR_DB = 60.0
MATH_COSINE = 0.999
TRACE_ROWS, TRACE_STEPS = 4, 48

SYNCING = {
    "aten::item",  # what `.item()`, `int()` and `bool()` dispatch to in inference mode
    "aten::_local_scalar_dense",
    "aten::nonzero",
    "aten::masked_select",
    "aten::is_nonzero",
    "aten::equal",
}
INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}
BOOLEAN_INDEXING = "boolean indexing"


class ReplayCapture:
    """CUDA graphs' stand-in on any device: `replay()` re-runs the captured step and copies its result into the
    output tensor of the capture, as a graph replay overwrites its static output."""

    def __init__(self) -> None:
        self.replays = 0

    def session(self) -> AbstractContextManager[None]:
        return nullcontext()

    def capture(self, step: Callable[[], torch.Tensor]) -> tuple[Replay, torch.Tensor]:
        output = step()

        def replay() -> None:
            self.replays += 1
            output.copy_(step())

        return replay, output


class OpRecorder(TorchDispatchMode):
    """Counts the aten ops run inside it, to find host synchronisations and the attention kernel used."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        name = func._schema.name
        if name in INDEXING and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in args[1] if index is not None
        ):
            name = BOOLEAN_INDEXING
        self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def syncs(self) -> list[str]:
        """The ops seen that wait for the device (a copy of a value to the host)."""
        return sorted(name for name in self.ops if name in SYNCING or name == BOOLEAN_INDEXING)

    @property
    def attention(self) -> str:
        """The SDPA kernels that ran (`math` when SDPA fell back to plain matrix products)."""
        kernels = sorted(
            name.removeprefix("aten::") for name in self.ops if "attention" in name and "_fused_sdp_choice" not in name
        )
        return ",".join(kernels) or "math"


def answer(index: int, sentences: int) -> tuple[str, Voice]:
    """The index-th test answer of `sentences` sentences, in one of three voices."""
    text = " ".join(SENTENCES[(index + k) % len(SENTENCES)] for k in range(sentences))
    return text, VOICES[index % len(VOICES)]


def codes_of(server: SpeechServer, text: str, voice: Voice) -> torch.Tensor:
    """The answer's frame codes decoded alone, `(frames, codebooks)` on the CPU."""
    codes: list[torch.Tensor] = []
    for _ in server.stream(text, voice, codes=codes):
        pass
    return torch.stack(codes).cpu()


def generated_codes(engine: TTSEngine, text: str, voice: Voice, sample: bool) -> torch.Tensor:
    """The codes `model.generate()` hands its codec for one sentence, seeded like the reference engine."""
    with seeded(voice.seed, engine.device):
        return generate_codes(engine.model, {**engine.generate_kwargs(text, voice), "do_sample": sample}).cpu()


def silent_decode(model: ParlerTTSForConditionalGeneration) -> Callable[[torch.Tensor], list[np.ndarray]]:
    """A codec stand-in for checks that compare codes only: silence of the right length."""
    hop = round(model.config.audio_encoder.sampling_rate / model.config.audio_encoder.frame_rate)
    return lambda codes: [np.zeros(codes.shape[-1] * hop, np.float32) for _ in range(codes.shape[0])]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Smoke:
    """The checks, on one device, sharing one tiny checkpoint and its fp32 and bf16 copies."""

    def __init__(self, device: torch.device, path: Path) -> None:
        self.device, self.path = device, path
        self.cuda = device.type == "cuda"
        self._servers: list[SpeechServer] = []
        self.captures: dict[SpeechServer, ReplayCapture] = {}
        self.model, self.tokenizer = load_parler(self.config("float32"))
        fold_weight_norm(self.model.audio_encoder)
        self.bf16_model = copy.deepcopy(self.model).to(torch.bfloat16)  # as `load_parler` gives it with bf16

    def config(self, dtype: str, max_batch: int = 8) -> TTSConfig:
        return TTSConfig(
            model=str(self.path),
            device=str(self.device),
            dtype=dtype,
            first_chunk_s=0.1,
            chunk_s=0.25,
            context_frames=8,
            max_batch=max_batch,
        )

    def server(self, *, graphs: bool, sample: bool, bf16: bool = False, **options: Any) -> SpeechServer:
        """A server on the shared model; graphs are CUDA graphs on CUDA and `ReplayCapture` elsewhere."""
        model = self.bf16_model if bf16 else self.model
        capture = ReplayCapture() if graphs and not self.cuda else None
        config = self.config("bfloat16" if bf16 else "float32", options.pop("max_batch", 8))
        server = SpeechServer(
            config,
            model,
            self.tokenizer,
            frames_per_sentence=FRAMES,
            do_sample=sample,
            cuda_graphs=graphs,
            capture=capture,
            **options,
        )
        if capture is not None:
            self.captures[server] = capture
        self._servers.append(server)
        return server

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def check_all(self, results: dict[str, dict[str, Any]]) -> None:
        """Every check after `setup`, each server built on first use (a server that fails to build fails the
        checks that use it, not the others)."""
        builders = {
            "greedy": lambda: self.server(graphs=True, sample=False),
            "eager": lambda: self.server(graphs=False, sample=False, decode=silent_decode(self.model)),
            "sampled": lambda: self.server(graphs=True, sample=True, decode=silent_decode(self.model)),
            "bf16": lambda: self.server(graphs=self.cuda, sample=True, bf16=True, max_batch=32),
        }
        made = {name: functools.cache(build) for name, build in builders.items()}
        record(results, "versions", self.versions)
        record(results, "host_sync", lambda: self.host_sync(made["greedy"]()))
        record(results, "graphs", lambda: self.graphs(made["greedy"](), made["eager"]()))
        record(results, "generate", lambda: self.generate(made["greedy"](), made["sampled"]()))
        record(results, "staggered", lambda: self.staggered(made["sampled"]()))
        record(results, "codec", lambda: self.codec(made["greedy"]()))
        record(results, "bf16", lambda: self.bf16(made["bf16"](), made["eager"]()))
        record(results, "steps", lambda: self.steps(made["bf16"]()))
        record(results, "close", self.close_in_subprocess)

    # --- the checks ---------------------------------------------------------------------------------------------

    def versions(self) -> dict[str, Any]:
        libraries = ("torch", "torchaudio", "transformers", "parler_tts", "tokenizers", "huggingface_hub", "numpy")
        result: dict[str, Any] = {
            "python": platform.python_version(),
            **{name: metadata.version(name) for name in libraries},
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if self.cuda else None,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
        }
        if self.cuda:
            result.update(
                card=torch.cuda.get_device_name(self.device),
                capability=".".join(map(str, torch.cuda.get_device_capability(self.device))),
                bf16=torch.cuda.is_bf16_supported(),
            )
        else:
            result.update(
                processor=platform.processor() or platform.machine(),
                bf16=bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            )
        result["ok"] = True
        return result

    def host_sync(self, server: SpeechServer) -> dict[str, Any]:
        decoder, graphs = server.decoder, server.graphs
        length, context = graphs.lengths[0], decoder.cache.context  # a bucket the graphs hold
        tokens = torch.zeros(server.max_streams, decoder.num_codebooks, dtype=torch.long, device=self.device)
        positions = torch.full((server.max_streams, 1), length - 1, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            with OpRecorder() as recorder:
                decoder.step(tokens, positions, length, context)
            result: dict[str, Any] = {"syncing_ops": recorder.syncs, "ops": sum(recorder.ops.values())}
            ok = not recorder.syncs
            if self.cuda:
                synchronize(self.device)
                for name, run in (("replay", graphs), ("eager_step", decoder.step)):
                    torch.cuda.set_sync_debug_mode("error")
                    try:
                        run(tokens, positions, length, context)
                        result[f"{name}_sync_free"] = True
                    except RuntimeError as exc:
                        result[f"{name}_sync_free"] = False
                        result[f"{name}_error"] = str(exc).splitlines()[0]
                    finally:
                        torch.cuda.set_sync_debug_mode(0)
                    synchronize(self.device)
                ok = ok and result["replay_sync_free"]
            else:
                result["sync_debug_mode"] = "skipped (no CUDA)"
        result["ok"] = ok
        return result

    def graphs(self, graphed: SpeechServer, eager: SpeechServer) -> dict[str, Any]:
        answers = [answer(i, 1 + i % 3) for i in range(3)]
        mismatched = [
            i
            for i, (text, voice) in enumerate(answers)
            if not torch.equal(codes_of(graphed, text, voice), codes_of(eager, text, voice))
        ]
        graphs = graphed.graphs
        result: dict[str, Any] = {
            "capture_s": round(graphs.capture_s, 2),
            "buckets": len(graphs.batches) * len(graphs.lengths),
            "tf32": torch.backends.cuda.matmul.allow_tf32,
            "mismatched_answers": mismatched,
        }
        if graphed in self.captures:  # the stand-in: make sure the answers went through it
            result["replays"] = self.captures[graphed].replays
        result["ok"] = not mismatched and result.get("replays", 1) > 0
        return result

    def generate(self, greedy: SpeechServer, sampled: SpeechServer) -> dict[str, Any]:
        reference = TTSEngine(greedy.config, self.model, self.tokenizer, frames_per_sentence=FRAMES)
        result: dict[str, Any] = {}
        for mode, server in (("greedy", greedy), ("sampled", sampled)):
            equal = [
                torch.equal(
                    codes_of(server, text, voice), generated_codes(reference, text, voice, server.rules.do_sample)
                )
                for text, voice in zip(SENTENCES[:2], VOICES[:2], strict=True)
            ]
            result[f"{mode}_equal"] = all(equal)
        result["ok"] = result["greedy_equal"] and result["sampled_equal"]
        return result

    def staggered(self, server: SpeechServer) -> dict[str, Any]:
        answers = [answer(i, 3) for i in range(8)]
        cancelled = {1, 4, 6}
        runs: list[dict[str, Any]] = []

        def consume(run: dict[str, Any], text: str, voice: Voice) -> None:
            try:
                for _ in server.stream(text, voice, run["cancel"], codes=run["codes"]):
                    run["started"].set()
            except TTSError as exc:
                run["error"] = str(exc)
            finally:
                run["started"].set()

        with ThreadPoolExecutor(len(answers)) as pool:
            futures = []
            for text, voice in answers:  # each joins the batch once the one before it speaks
                run = {"cancel": threading.Event(), "started": threading.Event(), "codes": [], "error": None}
                runs.append(run)
                futures.append(pool.submit(consume, run, text, voice))
                run["started"].wait(WAIT)
            for index in cancelled:
                runs[index]["cancel"].set()
            ended = [future.exception(WAIT) is None for future in futures]
        full = 3 * FRAMES
        deadline = time.monotonic() + WAIT
        while server.loop.active and time.monotonic() < deadline:  # rows are freed at the loop's next turn
            time.sleep(0.01)
        kept = [i for i in range(len(answers)) if i not in cancelled]
        result = {
            "ended": all(ended),
            "errors": [run["error"] for run in runs if run["error"]],
            "frames": [len(run["codes"]) for run in runs],
            "active_after": server.loop.active,
        }
        result["ok"] = (
            result["ended"]
            and not result["errors"]
            and all(len(runs[i]["codes"]) == full for i in kept)
            and all(len(runs[i]["codes"]) <= full for i in cancelled)
            and result["active_after"] == 0
        )
        return result

    def codec(self, server: SpeechServer) -> dict[str, Any]:
        """`server` decodes with the production codec call (`decode=None`)."""
        streams: list[int] = []
        original = server.model.audio_encoder.decode
        if self.cuda:
            default = torch.cuda.default_stream(self.device).stream_id

            def spy(*args: Any, **kwargs: Any) -> Any:
                streams.append(torch.cuda.current_stream(self.device).stream_id != default)
                return original(*args, **kwargs)

            server.model.audio_encoder.decode = spy
        try:
            count = 4 if self.cuda else 2  # the CPU codec is slow
            with ThreadPoolExecutor(count) as pool:
                runs = list(pool.map(lambda i: self._spoken(server, *answer(i, 1 + i % 2)), range(count)))
        finally:
            if self.cuda:
                del server.model.audio_encoder.decode
        snrs, finite = [], True
        for audio, codes in runs:
            finite = finite and bool(np.isfinite(audio).all())
            full = np.concatenate([decode_codes(server.model, part.T) for part in codes.split(FRAMES)])
            snrs.append(snr_db(full, audio) if audio.shape == full.shape else float("-inf"))
        result: dict[str, Any] = {"snr_db_min": round(min(snrs), 1), "finite": finite}
        if self.cuda:
            result["codec_on_its_stream"] = bool(streams) and all(streams)
        result["ok"] = min(snrs) >= SNR_DB and finite and result.get("codec_on_its_stream", True)
        return result

    def _spoken(self, server: SpeechServer, text: str, voice: Voice) -> tuple[np.ndarray, torch.Tensor]:
        codes: list[torch.Tensor] = []
        audio = np.concatenate([np.zeros(0, np.float32), *server.stream(text, voice, codes=codes)])
        return audio, torch.stack(codes).cpu()

    def bf16(self, server: SpeechServer, reference: SpeechServer) -> dict[str, Any]:
        """`server`: bf16 (graphs on CUDA); `reference`: the fp32 eager server."""
        with ThreadPoolExecutor(2) as pool:
            spoken = list(pool.map(lambda i: self._spoken(server, *answer(i, 1)), range(2)))
        lengths_ok = all(len(codes) == FRAMES for _, codes in spoken)
        finite = all(bool(np.isfinite(audio).all()) and audio.size for audio, _ in spoken)
        logits, ids = self._trace(server, server.loop.runner, None)
        with sdpa_kernel(SDPBackend.MATH):
            math, _ = self._trace(server, server.decoder.step, ids)
        fp32, _ = self._trace(reference, reference.decoder.step, ids)
        math_cosine = torch.nn.functional.cosine_similarity(logits, math, dim=-1)
        fp32_cosine = torch.nn.functional.cosine_similarity(logits, fp32, dim=-1)
        decoder = server.decoder
        tokens = torch.zeros(server.max_streams, decoder.num_codebooks, dtype=torch.long, device=self.device)
        positions = torch.full((server.max_streams, 1), 40, dtype=torch.long, device=self.device)
        with torch.inference_mode(), OpRecorder() as recorder:
            decoder.step(tokens, positions, decoder.cache.length, decoder.cache.context)
        result = {
            "dtype": str(decoder.dtype),
            "graphs": server.graphs is not None,
            "sdpa": recorder.attention,
            "lengths_ok": lengths_ok,
            "finite": finite,
            "cosine_vs_math": round(float(math_cosine.mean()), 5),
            "cosine_vs_math_min": round(float(math_cosine.min()), 5),
            "cosine_vs_fp32": round(float(fp32_cosine.mean()), 5),
        }
        result["ok"] = lengths_ok and finite and result["cosine_vs_math"] >= MATH_COSINE
        return result

    def _trace(
        self, server: SpeechServer, step: Callable[..., torch.Tensor], forced: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`TRACE_STEPS` steps of `TRACE_ROWS` sentences side by side, each prefilled in its row: fp32 logits
        `(steps, rows, codebooks, vocab)` and the ids fed (greedy, or `forced`). The server must be idle."""
        decoder, tokenizer, rules = server.decoder, self.tokenizer, server.rules
        length, context = decoder.cache.length, decoder.cache.context
        written, first = [], []
        with torch.inference_mode():
            decoder.cache.prepare(length, context)
            for row in range(TRACE_ROWS):
                description = tokenizer(VOICES[row % len(VOICES)].description, return_tensors="pt").to(self.device)
                decoder.cache.load_voice(row, decoder.encode(description.input_ids, description.attention_mask))
                prompt = tokenizer(SENTENCES[row], return_tensors="pt").input_ids.to(self.device)
                start = torch.full((1, rules.num_codebooks), rules.start_id, dtype=torch.long, device=self.device)
                hidden = torch.cat([decoder.prompt(prompt), decoder.embed(start)], dim=1)
                positions = torch.arange(hidden.shape[1], device=self.device)[None]
                first.append(decoder.forward(hidden, positions, row, length, context)[0])
                written.append(hidden.shape[1])
            positions = torch.tensor(written, device=self.device)[:, None]
            logits, fed = [torch.stack(first)], []
            for index in range(TRACE_STEPS - 1):
                tokens = forced[index] if forced is not None else logits[-1].argmax(-1)
                fed.append(tokens)
                logits.append(step(tokens, positions + index, length, context)[:TRACE_ROWS].clone())
        return torch.stack(logits).float().cpu(), torch.stack(fed)

    def steps(self, server: SpeechServer) -> dict[str, Any]:
        if self.cuda:
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        prompt = self.tokenizer(SENTENCES[0], return_tensors="pt").input_ids.shape[-1]
        times = step_ms(server, [1, 8, 32], prompt, FRAMES)
        result: dict[str, Any] = {"dtype": str(server.decoder.dtype), "graphs": server.graphs is not None}
        result["step_ms"] = times
        if self.cuda:
            result["max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        else:
            result["max_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        result["ok"] = all(value > 0 for value in times.values())
        return result

    def close_in_subprocess(self) -> dict[str, Any]:
        command = [
            sys.executable,
            "-m",
            "bench.gpu_smoke",
            "--device",
            str(self.device),
            "--close-child",
            str(self.path),
        ]
        try:
            child = subprocess.run(command, capture_output=True, text=True, timeout=WAIT)
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"the subprocess did not exit within {WAIT:.0f} s"}
        lines = child.stdout.strip().splitlines()
        result: dict[str, Any] = json.loads(lines[-1]) if child.returncode == 0 and lines else {}
        result["returncode"] = child.returncode
        if child.returncode:
            result["stderr"] = child.stderr[-2000:]
        result["ok"] = child.returncode == 0 and result.get("ended_with") == "TTSError"
        return result


def close_child(device: torch.device, path: Path) -> None:
    """Load the server, start an answer, close the server while it speaks; print how the answer ended."""
    config = TTSConfig(model=str(path), device=str(device), first_chunk_s=0.1, chunk_s=0.25, context_frames=8)
    server = SpeechServer.load(config, frames_per_sentence=20 * FRAMES)  # long enough to be in flight
    chunks = server.stream(" ".join(SENTENCES), VOICES[0])
    next(chunks)
    started = time.perf_counter()
    server.close()
    close_s = time.perf_counter() - started
    ended_with = "END"
    try:
        for _ in chunks:
            pass
    except TTSError:
        ended_with = "TTSError"
    print(json.dumps({"close_s": round(close_s, 2), "ended_with": ended_with}))


def record(results: dict[str, dict[str, Any]], name: str, check: Callable[[], dict[str, Any]]) -> None:
    """Run one check; its result (or error) goes into `results` and out as one JSON line on stdout."""
    started = time.perf_counter()
    try:
        result = check()
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc(limit=-4)}
    result["s"] = round(time.perf_counter() - started, 1)
    results[name] = result
    print(json.dumps({name: result}, default=str), flush=True)


def run(device: torch.device) -> dict[str, Any]:
    """Every check on `device`; the summary object."""
    torch.backends.cuda.matmul.allow_tf32 = False  # graph and eager codes are compared bit for bit
    torch.backends.cudnn.allow_tf32 = False
    results: dict[str, dict[str, Any]] = {}
    smokes: list[Smoke] = []
    with tempfile.TemporaryDirectory() as tmp:

        def setup() -> dict[str, Any]:
            smokes.append(Smoke(device, build_parler(Path(tmp) / "tiny")))
            return {"ok": True}

        record(results, "setup", setup)  # builds and loads the tiny model
        for smoke in smokes:
            try:
                smoke.check_all(results)
            finally:
                smoke.close()
    failed = [name for name, check in results.items() if not check["ok"]]
    return {"device": str(device), **results, "ok": not failed, "failed": failed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--json", action="store_true", help="print only JSON lines (progress goes to stderr)")
    parser.add_argument("--close-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.close_child:
        close_child(device, args.close_child)
        return
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu for the checks that need none")
    results = run(device)
    if not args.json:
        print(json.dumps(results, indent=1, default=str), file=sys.stderr)
    print(json.dumps(results, default=str), flush=True)
    sys.exit(0 if results["ok"] else 1)


if __name__ == "__main__":
    main()
