"""The speech server (`audio.serve`): its routes on a sine engine without Ray, then the real Ray Serve app started
locally with the tiny Parler model on CPU, behind the remote engine the bot uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from pydantic import SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from audio.serve import KEY_PLACEHOLDER, MAX_BEHIND_S, MAX_BODY_BYTES, ServeSettings, SpeechDeployment
from audio.speech import EngineHealth, TTSConfig, TTSError, Voice, synthesize
from audio.speech.remote import RemoteConfig, RemoteEngine
from audio.speech.server import SpeechServer
from tests.bot.doubles import SineEngine, until
from tests.e2e.harness import load_voiced_engine
from tests.fakes.speech_app import FRAMES_PER_SENTENCE, ROOT, free_port, local_speech_app

pytestmark = pytest.mark.timeout(240)

API_KEY = "test-key"
SENTENCE_S = FRAMES_PER_SENTENCE * 512 / 44100


@pytest.fixture(scope="module")
def local_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpeechServer]:
    """The in-process engine on the tiny checkpoint with an audible codec (loud enough that 16-bit PCM keeps
    about 95 dB of SNR: the plain tiny model's output sits near -40 dBFS, where quantisation alone gives 63 dB)."""
    engine = load_voiced_engine(tmp_path_factory.mktemp("served-parler"))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def model(local_engine: SpeechServer) -> str:
    return local_engine.config.model


@pytest.fixture(scope="module")
def app_url(model: str) -> Iterator[str]:
    with local_speech_app(Path(model), api_key=API_KEY) as url:
        yield url


@pytest.fixture(scope="module")
def remote(app_url: str, model: str) -> Iterator[RemoteEngine]:
    engine = RemoteEngine.connect(RemoteConfig(app_url, model, api_key=API_KEY, timeout=60))
    yield engine
    engine.close()


def call(url: str, body: dict[str, Any] | None = None, key: str | None = API_KEY) -> tuple[int, dict[str, Any]]:
    """GET (or POST `body`) and the JSON answer, whatever the status."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def health(app_url: str) -> dict[str, Any]:
    return call(f"{app_url}/healthz", key=None)[1]


def snr_db(reference: np.ndarray, test: np.ndarray) -> float:
    noise = np.sum((reference - test) ** 2)
    return float(10 * np.log10(np.sum(reference**2) / max(noise, 1e-30)))


class GatedEngine(SineEngine):
    """A sine engine that waits for `gate` after each chunk, so answers stay in flight."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.gate = threading.Event()

    def stream(self, text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        for chunk in super().stream(text, voice, cancel):
            yield chunk
            assert self.gate.wait(30)


def post(body: dict[str, Any] | bytes, headers: dict[str, str] | None = None, parts: int = 1) -> Request:
    """A Starlette request as Serve's proxy hands it to the deployment: `body` (JSON, or raw bytes sent in
    `parts` messages) with `headers`."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    size = -(-len(data) // parts)
    messages = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/audio/speech",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "query_string": b"",
    }
    received = iter(range(len(messages)))

    async def receive() -> dict[str, Any]:
        index = next(received, None)
        if index is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": messages[index], "more_body": index < len(messages) - 1}

    return Request(scope, receive)


def sine_server(engine: SineEngine, queue_size: int = 16, api_key: str | None = None) -> SpeechDeployment:
    key = SecretStr(api_key) if api_key else None
    return SpeechDeployment(TTSConfig(model="sine"), key, queue_size=queue_size, engine_factory=lambda _: engine)


def refusal(response: Response) -> tuple[int, str]:
    """The status and sentence of an error answer."""
    assert isinstance(response, JSONResponse)
    return response.status_code, json.loads(bytes(response.body))["error"]["message"]


SPEECH = {"model": "sine", "input": "Outlook good.", "voice": "A calm voice.", "response_format": "pcm"}


async def body_of(response: Response) -> bytes:
    assert isinstance(response, StreamingResponse)
    return b"".join([bytes(part) async for part in response.body_iterator])  # type: ignore[arg-type]


def test_the_batched_engine_settings_reach_each_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"TTS_MAX_BATCH": "4", "TTS_MAX_FRAMES": "860", "TTS_QUANTIZE": "int8"}.items():
        monkeypatch.setenv(name, value)
    config = ServeSettings().tts_config()
    assert (config.max_batch, config.max_frames, config.quantize) == (4, 860, "int8")


async def test_a_full_queue_answers_429_with_retry_after() -> None:
    engine = GatedEngine()
    server = sine_server(engine, queue_size=1)
    running = await server(post(SPEECH))  # streaming, held at its first chunk
    waiting = asyncio.create_task(server(post(SPEECH)))  # queued behind it
    await until(lambda: server._health()["waiting"] == 1)
    refused = await server(post(SPEECH))
    assert isinstance(refused, JSONResponse) and refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    engine.gate.set()
    assert running.headers["X-Sample-Rate"] == "16000"
    assert len(await body_of(running)) == len(await body_of(await waiting)) == 2 * round(13 * 0.01 * 16000)


async def test_failures_before_and_after_the_first_chunk(caplog: pytest.LogCaptureFixture) -> None:
    before = sine_server(SineEngine(fail_at={"*": 0}))
    response = await before(post(SPEECH))
    assert refusal(response) == (500, "Speech generation failed; the server's log has the details.")
    assert "synthetic TTS failure" in caplog.text  # the details stay in the log

    after = sine_server(SineEngine(fail_at={"*": 1}, chunk_seconds=0.05))
    with pytest.raises(TTSError):  # the server drops the connection: the client sees a cut stream
        await body_of(await after(post(SPEECH)))
    assert after._health()["failed"] == 1 and after._health()["served"] == 0


def test_models_health_and_keys(app_url: str, model: str) -> None:
    status, models = call(f"{app_url}/v1/models")
    assert status == 200
    assert [(m["id"], m["sample_rate"]) for m in models["data"]] == [(model, 44100)]
    assert health(app_url)["status"] == "ok"  # no token needed

    speech = {"model": model, "input": "Yes.", "voice": "A calm voice.", "response_format": "pcm"}
    for key in ("wrong-key", None):
        status, answer = call(f"{app_url}/v1/audio/speech", speech, key=key)
        assert (status, answer["error"]["type"]) == (401, "invalid_api_key")
    assert call(f"{app_url}/v1/models", key="wrong-key")[0] == 401
    wrong = RemoteEngine(RemoteConfig(app_url, model, api_key="wrong-key"), 44100)
    try:
        with pytest.raises(TTSError, match="refused the API key"):
            list(wrong.stream("Yes.", Voice("A calm voice.")))
    finally:
        wrong.close()

    for change in ({"model": "tts-1"}, {"response_format": "mp3"}, {"input": ""}, {"seed": "forty-two"}):
        status, answer = call(f"{app_url}/v1/audio/speech", {**speech, **change})
        assert (status, answer["error"]["type"]) == (400, "invalid_request_error"), change


def test_the_audio_equals_the_in_process_engine(remote: RemoteEngine, local_engine: SpeechServer) -> None:
    text, voice = "Most likely. Outlook good.", Voice("A male speaker with a deep voice.", seed=5)
    chunks = list(remote.stream(text, voice))
    expected = synthesize(local_engine, text, voice)
    assert len(chunks) > 1  # streamed, not one blob
    received = np.concatenate(chunks)
    assert received.shape == expected.shape == (2 * FRAMES_PER_SENTENCE * 512,)
    assert (snr := snr_db(expected, received)) >= 60, snr


def test_two_concurrent_requests_both_stream(remote: RemoteEngine, local_engine: SpeechServer) -> None:
    requests = [("It is certain.", Voice("A calm voice.", seed=1)), ("Very doubtful.", Voice("A calm voice.", 2))]
    both_sent = threading.Barrier(2, timeout=60)

    def ask(text: str, voice: Voice) -> list[np.ndarray]:
        chunks = remote.stream(text, voice)
        both_sent.wait()
        return list(chunks)

    served = health(remote.config.root)["served"]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda request: ask(*request), requests))
    for (text, voice), chunks in zip(requests, answers, strict=True):
        assert len(chunks) > 1
        assert (snr := snr_db(synthesize(local_engine, text, voice), np.concatenate(chunks))) >= 60, snr
    assert health(remote.config.root)["served"] == served + 2


def test_a_client_disconnect_stops_generation(remote: RemoteEngine) -> None:
    before = health(remote.config.root)
    sentences = 20
    cancel = threading.Event()
    chunks = remote.stream(" ".join(["Reply hazy, try again."] * sentences), Voice("A calm voice."), cancel)
    next(chunks)
    cancel.set()
    assert list(chunks) == []

    deadline = time.monotonic() + 60
    while (after := health(remote.config.root))["running"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the replica's engine is in another process: poll its state
    assert after["running"] == 0
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["served"] == before["served"]
    # Generation stopped early: far less than the 20 sentences was generated.
    assert after["generated_seconds"] - before["generated_seconds"] < sentences * SENTENCE_S / 2


@pytest.mark.parametrize(
    ("request_", "status", "sentence"),
    [
        (post(b"{" + b" " * MAX_BODY_BYTES + b"}", parts=8), 413, f"The body is larger than {MAX_BODY_BYTES} bytes."),
        (post(b"{}", {"Content-Length": str(10**9)}), 413, f"The body is larger than {MAX_BODY_BYTES} bytes."),
        (post(b"[" * 50_000 + b"]" * 50_000), 413, f"The body is larger than {MAX_BODY_BYTES} bytes."),
        (post(b"[" * 30_000 + b"]" * 30_000), 400, "The body's JSON nests too deeply."),
        (post(b"{'input': 1}"), 400, "The body must be JSON."),
        (post({**SPEECH, "voice": "A calm voice. " * 100}), 400, "`voice` is longer than 1000 characters."),
        (post({**SPEECH, "seed": 10**30}), 400, "`seed` must be an integer that fits in 64 bits."),
        (post({**SPEECH, "seed": -(2**63) - 1}), 400, "`seed` must be an integer that fits in 64 bits."),
        (post({**SPEECH, "seed": True}), 400, "`seed` must be an integer that fits in 64 bits."),
        (post({**SPEECH, "seed": 4.5}), 400, "`seed` must be an integer that fits in 64 bits."),
    ],
    ids=["body", "declared-body", "nested-body", "nested", "not-json", "voice", "seed", "negative", "bool", "float"],
)
async def test_requests_it_cannot_serve_are_refused_before_the_engine(
    request_: Request, status: int, sentence: str
) -> None:
    engine = SineEngine()
    assert refusal(await sine_server(engine)(request_)) == (status, sentence)
    assert engine.spoken == []


async def test_seeds_at_the_ends_of_64_bits_are_served() -> None:
    engine = SineEngine()
    server = sine_server(engine)
    for seed in (-(2**63), 2**63 - 1):
        assert len(await body_of(await server(post({**SPEECH, "seed": seed})))) > 0
    assert [voice.seed for _, voice in engine.spoken] == [-(2**63), 2**63 - 1]


async def test_sentences_and_voices_over_the_token_limits_are_refused_before_any_audio(
    local_engine: SpeechServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long second sentence used to fail in the middle of the answer, after the first one was sent."""
    asked: list[str] = []
    stream = local_engine.stream

    def recording(text: str, voice: Voice, cancel: threading.Event | None = None) -> Iterator[np.ndarray]:
        asked.append(text)
        return stream(text, voice, cancel)

    monkeypatch.setattr(local_engine, "stream", recording)
    model = local_engine.config.model
    server = SpeechDeployment(TTSConfig(model=model), engine_factory=lambda _: local_engine)
    speech = {"model": model, "input": "Yes.", "voice": "A calm voice."}
    long_sentence = " ".join(["word"] * 300) + "."
    for change, sentence in [
        (
            {"input": f"Yes. {long_sentence}"},
            r"Sentence 2 of `input` is \d+ tokens long; the model takes at most 256\.",
        ),
        ({"voice": "a " * 400}, r"`voice` is \d+ tokens long; the model takes at most 256\."),
    ]:
        status, message = refusal(await server(post({**speech, **change})))
        assert status == 400 and re.fullmatch(sentence, message), message
    assert asked == []


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer k3y", 200),
        ("bearer k3y", 200),
        ("BEARER  k3y ", 200),
        ("Bearer wrong", 401),
        ("Basic k3y", 401),
        ("k3y", 401),
    ],
)
async def test_the_bearer_scheme_is_case_insensitive(authorization: str, status: int) -> None:
    server = sine_server(SineEngine(), api_key="k3y")
    request = post(SPEECH, {"Authorization": authorization})
    assert (await server(request)).status_code == status


async def test_the_replica_reads_its_own_key_and_warns_without_one(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    open_server = sine_server(SineEngine())  # no key in the app's arguments nor in this process
    assert "No TTS_API_KEY" in caplog.text
    assert (await open_server(post(SPEECH))).status_code == 200
    caplog.clear()
    monkeypatch.setenv("TTS_API_KEY", "from-the-replica-node")
    server = sine_server(SineEngine())
    assert "No TTS_API_KEY" not in caplog.text
    assert (await server(post(SPEECH))).status_code == 401
    assert (await server(post(SPEECH, {"Authorization": "Bearer from-the-replica-node"}))).status_code == 200


def test_the_sample_config_placeholder_is_not_a_key() -> None:
    with pytest.raises(ValidationError, match="replace REPLACE-WITH-A-SECRET with a secret"):
        ServeSettings(_env_file=None, tts_api_key=KEY_PLACEHOLDER)  # type: ignore[call-arg]
    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    assert config["applications"][0]["args"]["tts_api_key"] == KEY_PLACEHOLDER


async def test_a_reader_too_far_behind_is_stopped_and_leaves_the_engine() -> None:
    engine = SineEngine(seconds_per_char=1.0, chunk_seconds=1.0)
    server = sine_server(engine)
    answer_s = 2 * MAX_BEHIND_S
    response = await server(post({**SPEECH, "input": "a" * int(answer_s)}))  # its body is never read
    await until(lambda: server._health()["running"] == 0)
    # The engine stopped soon after the bound instead of generating the whole answer for nobody.
    assert server._health()["generated_seconds"] <= MAX_BEHIND_S + 2
    with pytest.raises(TTSError, match="fell too far behind"):
        await body_of(response)


class LoopbackCluster:
    """The README's cluster recipe on this machine: a head node and a "GPU" node started by `ray start` in
    environments of their own, sharing Ray's token (token authentication on) through a private HOME.

    Every process is found by the cluster's own temp folder and stopped by its id (never `ray stop`, which would
    stop other Ray clusters of this user too)."""

    def __init__(self, folder: Path) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))  # short: Ray's socket paths are bounded
        self.env = {
            **os.environ,
            "HOME": str(folder),
            "RAY_AUTH_MODE": "token",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.env.pop("TTS_API_KEY", None)
        self.gcs = free_port()
        self.dashboard = free_port()
        self.http = free_port()

    def ray(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> str:
        """Run the `ray` CLI of this interpreter's environment; its output."""
        command = [str(Path(sys.executable).with_name("ray")), *args]
        done = subprocess.run(command, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def node_options(self) -> list[str]:
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--metrics-export-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
        }
        return [
            *(f"{option}={port}" for option, port in ports.items()),
            "--num-cpus=1",
            f"--object-store-memory={100 * 1024 * 1024}",
            "--disable-usage-stats",
        ]

    def start(self) -> None:
        self.ray("get-auth-token", "--generate")  # ~/.ray/auth_token, as any local ray.init() writes it
        self.ray(
            "start",
            "--head",
            f"--port={self.gcs}",
            f"--temp-dir={self.temp}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard}",
            f"--ray-client-server-port={free_port()}",
            *self.node_options(),
        )
        gpu_node = {**self.env, "TTS_API_KEY": "cluster-secret"}  # exported on the GPU node only
        self.ray(
            "start",
            f"--address=127.0.0.1:{self.gcs}",
            '--resources={"speech_node": 1}',
            *self.node_options(),
            env=gpu_node,
        )

    def processes(self) -> list[int]:
        """The ids of this cluster's processes: those whose command line names its temp folder, and their
        descendants (Ray's workers rename themselves `ray::...`)."""
        parents: dict[int, int] = {}
        ours: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes()
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if str(self.temp).encode() in command and int(entry.name) != os.getpid():
                    ours.add(int(entry.name))
        grown = True
        while grown:
            children = {pid for pid, parent in parents.items() if parent in ours} - ours
            ours |= children
            grown = bool(children)
        return sorted(ours)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 15
            while self.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.mark.timeout(600)
def test_the_cluster_recipe_requires_the_key_set_on_the_gpu_node(tiny_parler_dir: Path, tmp_path: Path) -> None:
    """Two `ray start` nodes, `TTS_API_KEY` exported on the GPU node only, `serve deploy` of the sample config
    (without its key line) on the head node: the replica on the GPU node reads the key itself."""
    cluster = LoopbackCluster(tmp_path)
    config = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    config["proxy_location"] = "HeadOnly"  # two proxies on one machine would want the same port
    config["http_options"] = {"host": "127.0.0.1", "port": cluster.http}
    app = config["applications"][0]
    del app["args"]["tts_api_key"]
    app["args"].update(tts_model=str(tiny_parler_dir), tts_replica_gpus=0)
    deployment = app["deployments"][0]
    deployment["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    deployment["ray_actor_options"] = {"num_cpus": 0, "num_gpus": 0, "resources": {"speech_node": 1}}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{cluster.http}"
    try:
        cluster.start()
        serve_cli = str(Path(sys.executable).with_name("serve"))
        subprocess.run(
            [serve_cli, "deploy", str(tmp_path / "serve.yaml"), f"--address=http://127.0.0.1:{cluster.dashboard}"],
            env=cluster.env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # the replica loads the model on the GPU node
            try:
                if call(f"{url}/healthz", key=None)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            time.sleep(1)
        assert call(f"{url}/healthz", key=None)[0] == 200
        assert call(f"{url}/v1/models", key=None)[0] == 401
        assert call(f"{url}/v1/models", key="wrong")[0] == 401
        status, models = call(f"{url}/v1/models", key="cluster-secret")
        assert status == 200 and models["data"][0]["id"] == str(tiny_parler_dir)
    finally:
        cluster.stop()
    assert cluster.processes() == []


class AilingEngine(SineEngine):
    """A sine engine that reports `problem` through the health interface."""

    problem = ""

    def health(self) -> EngineHealth:
        return EngineHealth(self.problem)


def test_the_replica_check_follows_the_engine_health() -> None:
    engine = AilingEngine()
    server = sine_server(engine)
    server.check_health()  # healthy: Serve keeps the replica
    assert server._health()["status"] == "ok"
    engine.problem = "the last 3 speech decoding steps failed"
    with pytest.raises(RuntimeError, match="the last 3 speech decoding steps failed"):
        server.check_health()  # Serve replaces a replica whose check raises
    assert server._health()["status"] == "unhealthy"
    assert server._health()["problem"] == engine.problem
