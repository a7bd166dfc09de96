"""What the emulator saw: messages, attachments, interactions, command syncs and REST requests."""

from __future__ import annotations

import asyncio
import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .world import Json, UserState, iso_now

T = TypeVar("T")

EPHEMERAL = 1 << 6
LOADING = 1 << 7
VOICE_MESSAGE = 1 << 13


class Notifier:
    """Wakes every waiter whenever recorded state changes."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Signal a change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for(self, predicate: Callable[[], T], timeout: float, what: str = "condition") -> T:
        """Return the first truthy ``predicate()`` result, re-checked after each change."""

        async def poll() -> T:
            while not (result := predicate()):
                await self._changed.wait()
            return result

        try:
            return await asyncio.wait_for(poll(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"emulator: timed out after {timeout}s waiting for {what}") from None


@dataclass
class AttachmentRecord:
    """A stored file: ``part_content_type`` is what the client sent (multipart part or PUT header)."""

    id: int
    filename: str
    data: bytes
    url: str
    part_content_type: str | None = None
    duration_secs: float | None = None
    waveform: str | None = None
    description: str | None = None

    @property
    def content_type(self) -> str:
        """The type Discord reports: the sent type, or guessed from the name for octet-stream."""
        sent = self.part_content_type
        if sent and sent != "application/octet-stream":
            return sent
        return mimetypes.guess_type(self.filename)[0] or "application/octet-stream"

    def payload(self) -> Json:
        """The attachment object."""
        data: Json = {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
            "flags": 0,
        }
        if self.description is not None:
            data["description"] = self.description
        if self.duration_secs is not None:
            data.update(duration_secs=self.duration_secs, waveform=self.waveform)
        return data


@dataclass
class MessageRecord:
    """A message as stored by the emulator (the latest state, with its edit history)."""

    id: int
    channel_id: int
    guild_id: int
    author: UserState
    content: str = ""
    flags: int = 0
    embeds: list[Json] = field(default_factory=list)
    components: list[Json] = field(default_factory=list)
    attachments: list[AttachmentRecord] = field(default_factory=list)
    allowed_mentions: Json | None = None
    message_reference: Json | None = None
    type: int = 0
    webhook_id: int | None = None
    interaction: Json | None = None
    member: Json | None = None
    mentions: list[Json] = field(default_factory=list)
    body: Json = field(default_factory=dict)
    created_at: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=iso_now)
    edits: list[tuple[float, Json]] = field(default_factory=list)
    deleted: bool = False

    @property
    def voice(self) -> bool:
        """Whether the message is a voice message (flag 1 << 13)."""
        return bool(self.flags & VOICE_MESSAGE)

    @property
    def ephemeral(self) -> bool:
        """Whether only the invoking user sees it (flag 64)."""
        return bool(self.flags & EPHEMERAL)

    def payload(self) -> Json:
        """The message object."""
        data: Json = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "guild_id": str(self.guild_id),
            "author": self.author.payload(),
            "content": self.content,
            "timestamp": self.timestamp,
            "edited_timestamp": iso_now() if self.edits else None,
            "tts": False,
            "mention_everyone": False,
            "mentions": self.mentions,
            "mention_roles": [],
            "mention_channels": [],
            "attachments": [a.payload() for a in self.attachments],
            "embeds": self.embeds,
            "components": self.components,
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.member is not None:
            data["member"] = self.member
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        if self.interaction is not None:
            data["interaction_metadata"] = self.interaction
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
            data["referenced_message"] = None
        return data


@dataclass
class InteractionEvent:
    """One REST call the bot made for an interaction, with the HTTP status it got."""

    kind: str  # "callback", "followup", "edit_original", "delete_original", "edit_followup", ...
    at: float
    body: Json
    status: int
    attachments: list[AttachmentRecord] = field(default_factory=list)
    message: MessageRecord | None = None

    @property
    def ok(self) -> bool:
        """Whether the emulator accepted the call."""
        return 200 <= self.status < 300

    @property
    def type(self) -> int | None:
        """The callback type (4 message, 5 deferred, 6 deferred update, 8 autocomplete, 9 modal)."""
        return self.body.get("type") if self.kind == "callback" else None

    @property
    def data(self) -> Json:
        """The message-like part of the body (a callback's ``data``, else the body itself)."""
        return (self.body.get("data") or {}) if self.kind == "callback" else self.body

    @property
    def flags(self) -> int:
        """The message flags of the body (64 = ephemeral)."""
        return int(self.data.get("flags") or 0)


class InteractionRecord:
    """An INTERACTION_CREATE the test triggered and everything the bot answered."""

    def __init__(self, notifier: Notifier, payload: Json) -> None:
        self._notifier = notifier
        self.payload = payload
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.dispatched_at: float | None = None
        self.events: list[InteractionEvent] = []
        self.original: MessageRecord | None = None

    def __repr__(self) -> str:
        return f"<InteractionRecord id={self.id} name={self.name!r} events={[e.kind for e in self.events]}>"

    @property
    def name(self) -> str:
        """The invoked command's name."""
        return str(self.payload["data"].get("name", ""))

    def _ok(self, kind: str) -> list[InteractionEvent]:
        return [e for e in self.events if e.kind == kind and e.ok]

    @property
    def callback(self) -> InteractionEvent | None:
        """The accepted callback, if any."""
        accepted = self._ok("callback")
        return accepted[0] if accepted else None

    @property
    def followups(self) -> list[InteractionEvent]:
        """Accepted follow-up messages."""
        return self._ok("followup")

    @property
    def edits(self) -> list[InteractionEvent]:
        """Accepted edits of the original response."""
        return self._ok("edit_original")

    @property
    def deferred(self) -> bool:
        """Whether the bot deferred (callback type 5 or 6)."""
        return self.callback is not None and self.callback.type in (5, 6)

    @property
    def ephemeral(self) -> bool:
        """Whether the callback asked for an ephemeral response."""
        return self.callback is not None and bool(self.callback.flags & EPHEMERAL)

    @property
    def response_delay(self) -> float | None:
        """Seconds between the dispatch and the accepted callback."""
        if self.callback is None or self.dispatched_at is None:
            return None
        return self.callback.at - self.dispatched_at

    @property
    def choices(self) -> list[Json] | None:
        """Autocomplete choices of a type 8 callback."""
        callback = self.callback
        return callback.data.get("choices") if callback and callback.type == 8 else None

    @property
    def messages(self) -> list[MessageRecord]:
        """The original response (if any) and the follow-ups, as stored messages."""
        followups = [e.message for e in self.followups if e.message is not None]
        return ([self.original] if self.original else []) + followups

    async def wait_for_response(self, timeout: float = 5.0) -> InteractionEvent:
        """Wait for the accepted callback."""
        return await self._notifier.wait_for(lambda: self.callback, timeout, f"a callback to {self!r}")

    async def wait_for(self, predicate: Callable[[InteractionRecord], Any], timeout: float = 5.0) -> None:
        """Wait until ``predicate(self)`` holds."""
        await self._notifier.wait_for(lambda: predicate(self), timeout, f"a predicate on {self!r}")


@dataclass
class CommandSync:
    """One bulk overwrite of application commands (``guild_id`` None = global)."""

    guild_id: int | None
    commands: list[Json]
    at: float = field(default_factory=time.monotonic)


@dataclass
class RestRequest:
    """One REST request and the status the emulator answered."""

    method: str
    path: str
    status: int
    body: Any
    at: float = field(default_factory=time.monotonic)


@dataclass
class RestFault:
    """An injected REST failure: the next ``times`` matching requests get ``status``."""

    method: str
    path_regex: str
    status: int
    times: int
    retry_after: float
    is_global: bool


@dataclass
class VoiceRequest:
    """An op 4 voice state update from the bot; refused ones (no CONNECT, channel full) go unanswered."""

    guild_id: int
    channel_id: int | None
    self_mute: bool
    self_deaf: bool
    accepted: bool
    at: float = field(default_factory=time.monotonic)
