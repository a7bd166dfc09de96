"""Command line: `python -m bot` runs the bot; `python -m bot ask ...` checks tokens and models without Discord;
`python -m bot db upgrade|current` migrates or shows the database schema."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import wave
from pathlib import Path

import discord
import numpy as np
from pydantic import ValidationError

from audio.errors import UserFacingError
from audio.ffmpeg import FFmpegUnavailable
from audio.formats import AudioInputError, to_pcm16
from bot.questions import QuestionRefused
from bot.settings import Settings, get_settings
from bot.store import DatabaseUnavailable

_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{18,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}$")


class UsageError(Exception):
    """A problem the operator fixes by changing settings; the message is one sentence."""


def check_discord_token(settings: Settings) -> str:
    """Return the bot token, or raise `UsageError` saying what to set and where (never echoing the value)."""
    if settings.discord_token is None or not settings.discord_token.get_secret_value().strip():
        raise UsageError(
            "DISCORD_TOKEN is not set: put your bot token from the Discord Developer Portal (Bot → Reset Token) "
            "in the environment or in a .env file next to where you run `python -m bot`."
        )
    token = settings.discord_token.get_secret_value().strip()
    if not _TOKEN_SHAPE.match(token):
        raise UsageError(
            "DISCORD_TOKEN does not look like a Discord bot token: copy it again from the Discord Developer "
            "Portal (Bot → Reset Token) into the environment or your .env file."
        )
    return token


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """Write float mono samples as a 16-bit WAV file."""
    pcm = to_pcm16(samples)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())


async def ask(settings: Settings, question: str | None, audio: Path | None, speak: Path | None) -> None:
    """Answer one question on the command line, printing the transcript (if any) and the answer.

    The question passes the bot's own rules (`bot.questions`): cleaned, refused or cut as in Discord."""
    from bot.services import build_oracle, build_transcriber, question_rules

    rules = question_rules(settings)
    if audio is not None:
        rules.check_recording(audio.name, None, audio.stat().st_size, None)
        transcript = rules.transcript(await build_transcriber(settings).transcribe(audio.read_bytes(), audio.name))
        print(f"Transcript{transcript.note}: {transcript.text}")
        question = transcript.text
    else:
        assert question is not None
        question = rules.typed(question)
    answer = await build_oracle(settings).answer(question)
    print(f"Answer: {answer}")
    if speak is not None:
        from audio.speech import Voice, synthesize
        from bot.services import build_speech_engine

        engine = await asyncio.to_thread(build_speech_engine, settings)
        voice = Voice(settings.tts_voice_description, settings.tts_seed)
        samples = await asyncio.to_thread(synthesize, engine, answer, voice)
        write_wav(speak, samples, engine.sample_rate)
        print(f"Spoken answer written to {speak}")


async def database(settings: Settings, action: str) -> None:
    """`db upgrade`: migrate the schema to the newest revision; `db current`: print its revision."""
    from bot.migrations import head
    from bot.store import GuildStore

    store = GuildStore(settings.database_url.get_secret_value(), connect_seconds=settings.database_connect_seconds)
    await store.connect()
    try:
        await store.wait_until_reachable()
        revision = await (store.upgrade() if action == "upgrade" else store.revision())
    finally:
        await store.close()
    newest = head()
    if revision is None:
        print(f"No revision yet: `python -m bot db upgrade` (or starting the bot) brings it to {newest}.")
    elif revision == newest:
        print(f"Revision {revision} (the newest).")
    else:
        print(f"Revision {revision}; the newest is {newest}: run `python -m bot db upgrade`.")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Magic 8 Ball voice bot for Discord.")
    sub = parser.add_subparsers(dest="command")
    ask_parser = sub.add_parser("ask", help="answer one question without Discord (checks tokens and models)")
    ask_parser.add_argument("question", nargs="?", help="the question text")
    ask_parser.add_argument("--audio", type=Path, help="a recorded question (ogg, mp3, m4a, wav, webm)")
    ask_parser.add_argument("--speak", type=Path, help="also synthesise the answer to this WAV file")
    db_parser = sub.add_parser("db", help="the database schema (DATABASE_URL)")
    db_parser.add_argument("action", choices=("upgrade", "current"), help="migrate to the newest revision, or show it")
    args = parser.parse_args(argv)
    if args.command == "ask" and (args.question is None) == (args.audio is None):
        parser.error("ask takes either a question or --audio FILE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = get_settings()
        if args.command == "ask":
            logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
            asyncio.run(ask(settings, args.question, args.audio, args.speak))
            return 0
        if args.command == "db":
            logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
            asyncio.run(database(settings, args.action))
            return 0
        check_discord_token(settings)
        from bot.client import run

        run(settings)
        return 0
    except ValidationError as exc:
        fields = ", ".join(str(err["loc"][0]).upper() for err in exc.errors() if err["loc"])
        reasons = [str(err["ctx"]["error"]) for err in exc.errors() if err["type"] == "value_error"]
        generic = f"Invalid setting {fields}: fix it in the environment or .env (see .env.example)."
        message = reasons[0] if reasons else generic
    except (UsageError, FFmpegUnavailable, DatabaseUnavailable) as exc:
        message = str(exc)
    except (QuestionRefused, AudioInputError) as exc:  # the question itself: the sentence the bot would reply
        message = exc.sentence
    except discord.LoginFailure:
        message = (
            "Discord refused DISCORD_TOKEN: copy a fresh token from the Discord Developer Portal (Bot → Reset Token) "
            "into the environment or your .env file."
        )
    except discord.PrivilegedIntentsRequired:
        message = (
            "MESSAGE_CONTENT_INTENT=true needs the Message Content intent: switch it on in the Discord Developer "
            "Portal (Bot → Privileged Gateway Intents) or set MESSAGE_CONTENT_INTENT=false."
        )
    except OSError as exc:  # an unreadable --audio file, an unwritable --speak path, an unreachable model hub
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except UserFacingError as exc:
        message = f"{exc.sentence} ({type(exc).__name__})"
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
