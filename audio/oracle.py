"""Question → short cryptic proverb: an instruct LLM through the Inference API, or the classic toy offline."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from audio.inference import ProviderError, RetryPolicy, call_with_retries, chat_completions_url, post
from audio.text import remove_links, strip_invisible

CLASSIC_ANSWERS: tuple[str, ...] = (
    "It is certain.",
    "It is decidedly so.",
    "Without a doubt.",
    "Yes definitely.",
    "You may rely on it.",
    "As I see it, yes.",
    "Most likely.",
    "Outlook good.",
    "Yes.",
    "Signs point to yes.",
    "Reply hazy, try again.",
    "Ask again later.",
    "Better not tell you now.",
    "Cannot predict now.",
    "Concentrate and ask again.",
    "Don't count on it.",
    "My reply is no.",
    "My sources say no.",
    "Outlook not so good.",
    "Very doubtful.",
)

FOOLISH = "Foolish questions get foolish answers."

PERSONA = (
    "You are a Magic 8 Ball. Someone will present to you a situation or question and your job is to answer "
    "with a short cryptic adage or proverb such as 'curiosity killed the cat' or 'the early bird gets the "
    "worm'. Keep your answer to one short sentence and never say 'Magic 8 Ball'. If the question does not "
    f"make sense or is off-topic, answer '{FOOLISH}'"
)
EXAMPLE_QUESTION = "Magic 8 Ball, should I get a dog?"
EXAMPLE_ANSWER = "A dog is ready for you, but are you ready for the dog?"

MAX_ANSWER_CHARS = 200
_MENTION = re.compile(r"@(everyone|here)|<@[!&]?\d+>|<#\d+>")
_MAGIC = re.compile(r"magic\s*8[\s-]*ball", re.IGNORECASE)
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_QUOTES = "\"'“”‘’`«»"


def sanitize_answer(text: str, max_chars: int = MAX_ANSWER_CHARS) -> str:
    """Make model output safe to post and speak: one short line, no mentions, links, invites, headers, persona
    name, quotes or invisible characters."""
    text = remove_links(_LINK.sub(r"\1", strip_invisible(text)))
    text = _MAGIC.sub("", text).replace(":", "")
    text = " ".join(text.split())
    text = text.strip().strip(_QUOTES + " ,.-#>").strip()
    text = _MENTION.sub(lambda m: m.group(0).replace("@", "@\u200b").replace("<", "<\u200b"), text)
    text = text.replace("*", "").replace("_", " ").replace("~", "").replace("|", "")
    text = " ".join(text.split())
    if len(text) > max_chars:
        cut = text[:max_chars]
        sentence_end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        text = cut[: sentence_end + 1] if sentence_end > max_chars // 3 else cut.rsplit(" ", 1)[0] + "…"
    if not text:
        return FOOLISH
    if text[-1].isalnum():
        text += "."
    return text[0].upper() + text[1:]


HF_ROUTER_URL = "https://router.huggingface.co/v1"


@dataclass(frozen=True)
class OracleConfig:
    """Which LLM answers, and how it is reached. No token and no base URL means the offline toy.

    Chat completions are OpenAI-compatible requests: to `base_url`, or else to the Hub's router (`router_url`),
    which picks the provider on the server: by its own selection for `provider="auto"`, else the one named (sent
    as `model:provider`). The bot never has to know the provider, so providers newer than huggingface_hub work.
    """

    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    provider: str = "auto"
    base_url: str | None = None
    token: str | None = field(default=None, repr=False)
    router_url: str = HF_ROUTER_URL
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_tokens: int = 64


class Oracle:
    """Answers questions like the classic toy, with an LLM when one is configured."""

    def __init__(self, config: OracleConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self.offline = config.token is None and config.base_url is None

    @property
    def _model(self) -> str:
        """The `model` of the request: as configured for a server, `model:provider` for the router."""
        cfg = self.config
        if cfg.base_url or cfg.provider == "auto":
            return cfg.model
        return f"{cfg.model}:{cfg.provider}"

    async def answer(self, question: str) -> str:
        """Return a short proverb answering `question` (raises `InferenceError` subclasses on API failure)."""
        if self.offline:
            return self._rng.choice(CLASSIC_ANSWERS)
        messages = [
            {"role": "system", "content": PERSONA},
            {"role": "user", "content": EXAMPLE_QUESTION},
            {"role": "assistant", "content": EXAMPLE_ANSWER},
            {"role": "user", "content": question},
        ]
        seed = self._rng.randrange(2**31)

        cfg = self.config
        url = chat_completions_url(cfg.base_url or cfg.router_url)
        payload = {"model": self._model, "messages": messages, "max_tokens": cfg.max_tokens, "seed": seed}

        async def ask() -> str:
            out = await post(url, token=cfg.token, timeout=cfg.retry.timeout, json=payload)
            content = out["choices"][0]["message"]["content"]  # type: ignore[index]
            if not isinstance(content, str):
                raise ProviderError("reply without text")
            return content

        reply = await call_with_retries(ask, self.config.retry, what="chat completion")
        return sanitize_answer(reply)
