"""The REST API subset the bot uses, with Discord's JSON shapes, error bodies and rate-limit headers."""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .records import (
    EPHEMERAL,
    LOADING,
    VOICE_MESSAGE,
    AttachmentRecord,
    CommandSync,
    InteractionEvent,
    InteractionRecord,
    MessageRecord,
    RestRequest,
)
from .world import Json, snowflake

if TYPE_CHECKING:
    from .server import DiscordEmulator

_log = logging.getLogger(__name__)
API = "/api/v10"
UPLOAD_LIMIT = 10 * 1024 * 1024
_MESSAGE_FIELDS = ("content", "embeds", "components", "allowed_mentions")
_REPLY, _SLASH_RESPONSE, _CONTEXT_MENU_RESPONSE = 19, 20, 23

_BODY = web.RequestKey("emulator_body", object)
Handler = Callable[..., Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """A Discord error answer: ``{"message": ..., "code": ...}`` with an HTTP status."""

    def __init__(self, status: int, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer with exactly ``Content-Type: application/json`` (what discord.py checks)."""
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json", **(headers or {})}
    )


@dataclass
class _Part:
    filename: str
    data: bytes
    content_type: str | None


class RestApi:
    """Routes requests under ``/api/v10`` plus upload URLs and attachment downloads."""

    def __init__(self, emu: DiscordEmulator) -> None:
        self.emu = emu
        me = r"(?P<app>\d+)/(?P<token>[^/]+)"
        self._routes: list[tuple[str, re.Pattern[str], Handler, bool]] = []
        for method, pattern, handler, auth in [
            ("GET", r"/gateway(/bot)?", self.get_gateway, True),
            ("GET", r"/users/@me", self.get_me, True),
            ("GET", r"/users/(?P<user_id>\d+)", self.get_user, True),
            ("GET", r"/oauth2/applications/@me", self.get_application, True),
            ("GET", r"/applications/(?P<app>\d+)(/guilds/(?P<guild_id>\d+))?/commands", self.get_commands, True),
            ("PUT", r"/applications/(?P<app>\d+)(/guilds/(?P<guild_id>\d+))?/commands", self.put_commands, True),
            ("POST", r"/interactions/(?P<interaction_id>\d+)/(?P<token>[^/]+)/callback", self.callback, False),
            ("POST", rf"/webhooks/{me}", self.followup, False),
            ("GET", rf"/webhooks/{me}/messages/(?P<message>@original|\d+)", self.get_webhook_message, False),
            ("PATCH", rf"/webhooks/{me}/messages/(?P<message>@original|\d+)", self.edit_webhook_message, False),
            ("DELETE", rf"/webhooks/{me}/messages/(?P<message>@original|\d+)", self.delete_webhook_message, False),
            ("GET", r"/channels/(?P<channel_id>\d+)", self.get_channel, True),
            ("GET", r"/channels/(?P<channel_id>\d+)/messages", self.get_messages, True),
            ("POST", r"/channels/(?P<channel_id>\d+)/messages", self.create_message, True),
            ("GET", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)", self.get_message, True),
            ("PATCH", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)", self.edit_message, True),
            ("DELETE", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)", self.delete_message, True),
            ("POST", r"/channels/(?P<channel_id>\d+)/typing", self.typing, True),
            ("PUT", r"/channels/(?P<channel_id>\d+)/voice-status", self.put_voice_status, True),
            ("POST", r"/channels/(?P<channel_id>\d+)/attachments", self.request_upload, True),
            ("GET", r"/guilds/(?P<guild_id>\d+)/members/(?P<user_id>\d+)", self.get_member, True),
        ]:
            self._routes.append((method, re.compile(API + pattern), handler, auth))
        self._routes.append(("PUT", re.compile(r"/upload/(?P<key>.+)"), self.upload, False))
        self._routes.append(("GET", re.compile(r"/attachments/\d+/(?P<attachment_id>\d+)/[^/]+"), self.download, False))

    # -- plumbing -------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Route one request, applying injected faults and recording it."""
        path = request.path
        body: Any = None
        try:
            response = await self._route(request, path)
        except HttpError as error:
            response = json_response({"message": error.message, "code": error.code}, error.status)
        except Exception as error:  # an emulator bug: answer like Discord, keep it for the test
            _log.exception("emulator error handling %s %s", request.method, path)
            self.emu.internal_errors.append(error)
            response = json_response({"message": "500: Internal Server Error", "code": 0}, 500)
        body = request.get(_BODY)
        self.emu.requests.append(RestRequest(request.method, path, response.status, body))
        self.emu.notifier.notify()
        return response

    async def _route(self, request: web.Request, path: str) -> web.StreamResponse:
        if (fault := self._take_fault(request.method, path.removeprefix(API))) is not None:
            return fault
        for method, pattern, handler, auth in self._routes:
            if method == request.method and (match := pattern.fullmatch(path)):
                if auth and request.headers.get("Authorization") != f"Bot {self.emu.token}":
                    raise HttpError(401, "401: Unauthorized")
                return await handler(request, **{k: v for k, v in match.groupdict().items() if v})
        raise HttpError(404, "404: Not Found")

    def _take_fault(self, method: str, path: str) -> web.Response | None:
        for fault in self.emu.faults:
            if fault.times > 0 and fault.method == method and re.search(fault.path_regex, path):
                fault.times -= 1
                if fault.status != 429:
                    return json_response({"message": f"{fault.status}: Emulated error", "code": 0}, fault.status)
                scope = "global" if fault.is_global else "user"
                headers = {
                    "Retry-After": str(math.ceil(fault.retry_after)),
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
                    "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}",
                    "X-RateLimit-Bucket": "emulated-bucket",
                    "X-RateLimit-Scope": scope,
                    "Via": "1.1 google",
                }
                if fault.is_global:
                    headers["X-RateLimit-Global"] = "true"
                body = {
                    "message": "You are being rate limited.",
                    "retry_after": fault.retry_after,
                    "global": fault.is_global,
                    "code": 0,
                }
                return json_response(body, 429, headers)
        return None

    async def _read(self, request: web.Request) -> tuple[Any, dict[str, _Part]]:
        """The JSON body (``payload_json`` for multipart) and the file parts by field name."""
        payload: Any = None
        parts: dict[str, _Part] = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                data = await part.read()  # type: ignore[union-attr]
                if part.name == "payload_json":
                    payload = json.loads(data)
                else:
                    parts[part.name or ""] = _Part(
                        part.filename or "file",  # type: ignore[union-attr]
                        bytes(data),
                        part.headers.get("Content-Type"),
                    )
        elif request.can_read_body:
            payload = json.loads(await request.read())
        request[_BODY] = payload
        return payload, parts

    def _attachments(
        self, channel_id: int, body: Json, parts: dict[str, _Part], keep: list[AttachmentRecord]
    ) -> list[AttachmentRecord]:
        """Resolve ``attachments`` entries to new files, uploaded files or kept ones."""
        result: list[AttachmentRecord] = []
        kept = {a.id: a for a in keep}
        specs = body.get("attachments")
        if specs is None:  # no list: keep the old ones, add any bare files
            specs = [{"id": a.id} for a in keep] + [{"id": name[6:-1]} for name in parts]
        for spec in specs:
            part = parts.get(f"files[{spec['id']}]")
            uploaded = self.emu.uploads.pop(spec.get("uploaded_filename", ""), None)
            if part is not None:
                attachment = self.emu.store_attachment(channel_id, part.filename, part.data, part.content_type)
            elif uploaded is not None:
                data, content_type = uploaded
                attachment = self.emu.store_attachment(channel_id, spec["filename"], data, content_type)
            elif (old := kept.get(int(spec["id"]))) is not None:
                result.append(old)
                continue
            else:
                raise HttpError(400, "Invalid Form Body", 50035)
            if len(attachment.data) > UPLOAD_LIMIT:
                raise HttpError(413, "Request entity too large", 40005)
            attachment.description = spec.get("description")
            attachment.duration_secs = spec.get("duration_secs")
            attachment.waveform = spec.get("waveform")
            result.append(attachment)
        return result

    def _message(self, channel_id: int, body: Json, attachments: list[AttachmentRecord], **extra: Any) -> MessageRecord:
        """Create, validate and store a message from a request body."""
        flags = int(body.get("flags") or 0)
        if flags & VOICE_MESSAGE:
            flags = _validate_voice(body, attachments, flags)
        fields: dict[str, Any] = {k: body[k] for k in _MESSAGE_FIELDS if body.get(k) is not None}
        fields["type"] = _REPLY if body.get("message_reference") else 0
        fields.update(extra)
        message = MessageRecord(
            id=snowflake(),
            channel_id=channel_id,
            guild_id=self.emu.world.guild_of_channel(channel_id).id,
            author=self.emu.world.bot,
            flags=flags,
            attachments=attachments,
            message_reference=body.get("message_reference"),
            body=body,
            **fields,
        )
        self.emu.add_message(message)
        return message

    def _edit(self, message: MessageRecord, body: Json, parts: dict[str, _Part]) -> list[AttachmentRecord]:
        """Apply an edit; returns the newly added attachments."""
        if message.voice:
            raise HttpError(400, "Voice messages cannot be edited.", 50162)
        before = {a.id for a in message.attachments}
        message.attachments = self._attachments(message.channel_id, body, parts, message.attachments)
        for key in _MESSAGE_FIELDS:
            if key in body:
                setattr(message, key, body[key] if body[key] is not None else ("" if key == "content" else []))
        message.flags &= ~LOADING
        message.edits.append((time.monotonic(), body))
        self.emu.update_message(message)
        return [a for a in message.attachments if a.id not in before]

    def _message_in(self, channel_id: str, message_id: str) -> MessageRecord:
        message = self.emu.messages.get(int(message_id))
        if message is None or message.deleted or message.channel_id != int(channel_id):
            raise HttpError(404, "Unknown Message", 10008)
        return message

    def _channel_permissions(self, channel_id: str, *needed: str) -> None:
        try:
            guild = self.emu.world.guild_of_channel(int(channel_id))
        except KeyError:
            raise HttpError(404, "Unknown Channel", 10003) from None
        if self.emu.world.bot.id not in guild.members:  # removed from the guild
            raise HttpError(403, "Missing Access", 50001)
        permissions = guild.permissions_for(self.emu.world.bot.id, int(channel_id))
        if not all(getattr(permissions, name) for name in ("view_channel", *needed)):
            raise HttpError(403, "Missing Permissions", 50013)

    # -- identity and commands ------------------------------------------------------------------------
    async def get_gateway(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        shards = self.emu.recommended_shards
        return json_response({"url": self.emu.gateway_url, "shards": shards, "session_start_limit": limit})

    async def get_me(self, request: web.Request) -> web.Response:
        return json_response(self.emu.world.bot.payload())

    async def get_user(self, request: web.Request, user_id: str) -> web.Response:
        user = self.emu.world.users.get(int(user_id))
        if user is None:
            raise HttpError(404, "Unknown User", 10013)
        return json_response(user.payload())

    async def get_application(self, request: web.Request) -> web.Response:
        world = self.emu.world
        return json_response(
            {
                "id": str(world.application_id),
                "name": world.bot.name,
                "icon": None,
                "description": "",
                "summary": "",
                "rpc_origins": [],
                "bot_public": True,
                "bot_require_code_grant": False,
                "bot": world.bot.payload(),
                "owner": self.emu.app_owner.payload(),
                "team": None,
                "verify_key": secrets.token_hex(32),
                "flags": 0,
                "interactions_endpoint_url": None,
                "tags": [],
            }
        )

    def _check_app(self, app: str) -> None:
        if int(app) != self.emu.world.application_id:
            raise HttpError(404, "Unknown Application", 10002)

    async def get_commands(self, request: web.Request, app: str, guild_id: str | None = None) -> web.Response:
        self._check_app(app)
        return json_response(self.emu.commands(int(guild_id) if guild_id else None))

    async def put_commands(self, request: web.Request, app: str, guild_id: str | None = None) -> web.Response:
        self._check_app(app)
        body, _ = await self._read(request)
        scope = int(guild_id) if guild_id else None
        if scope is not None and scope not in self.emu.world.guilds:
            raise HttpError(404, "Unknown Guild", 10004)
        previous = {(c["name"], c.get("type", 1)): c["id"] for c in self.emu.commands(scope)}
        commands = []
        for command in body:
            kind = command.get("type", 1)
            stored = {
                "type": kind,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "dm_permission": True,
                "nsfw": False,
                "contexts": None,
                "integration_types": [0],
                "name_localizations": None,
                "description_localizations": None,
                **command,
                "id": previous.get((command["name"], kind)) or str(snowflake()),
                "application_id": app,
                "version": str(snowflake()),
            }
            if scope is not None:
                stored["guild_id"] = str(scope)
            commands.append(stored)
        self.emu.command_syncs.append(CommandSync(scope, commands))
        return json_response(commands)

    # -- interactions ---------------------------------------------------------------------------------
    def _interaction(self, token: str) -> InteractionRecord:
        record = self.emu.interactions.get(token)
        if record is None:
            raise HttpError(404, "Unknown Webhook", 10015)
        return record

    def _log(self, record: InteractionRecord, event: InteractionEvent) -> None:
        record.events.append(event)
        self.emu.notifier.notify()

    async def callback(self, request: web.Request, interaction_id: str, token: str) -> web.StreamResponse:
        body, parts = await self._read(request)
        now = time.monotonic()
        record = self.emu.interactions.get(token)
        if record is None or record.id != int(interaction_id):
            raise HttpError(404, "Unknown interaction", 10062)
        try:
            if record.callback is not None:
                raise HttpError(400, "Interaction has already been acknowledged.", 40060)
            if record.dispatched_at is None or now - record.dispatched_at > self.emu.interaction_deadline:
                raise HttpError(404, "Unknown interaction", 10062)
        except HttpError as error:
            self._log(record, InteractionEvent("callback", now, body, error.status))
            raise
        kind, data = body["type"], body.get("data") or {}
        channel_id = int(record.payload["channel_id"])
        attachments = self._attachments(channel_id, data, parts, []) if kind == 4 else []
        if kind in (4, 5):
            flags = int(data.get("flags") or 0) & (EPHEMERAL | VOICE_MESSAGE)
            message_body = {**data, "flags": flags | (LOADING if kind == 5 else 0)}
            record.original = self._message(
                channel_id,
                message_body,
                attachments,
                webhook_id=self.emu.world.application_id,
                interaction=_interaction_metadata(record),
                type=_SLASH_RESPONSE if record.payload["data"].get("type", 1) == 1 else _CONTEXT_MENU_RESPONSE,
            )
        self._log(record, InteractionEvent("callback", now, body, 200, attachments, record.original))
        if "with_response" not in request.query:
            return web.Response(status=204)
        original = record.original
        resource: Json = {"type": kind}
        if kind == 4 and original is not None:
            resource["message"] = original.payload()
        return json_response(
            {
                "interaction": {
                    "id": str(record.id),
                    "type": record.payload["type"],
                    "response_message_id": str(original.id) if original else None,
                    "response_message_loading": kind == 5,
                    "response_message_ephemeral": bool(original and original.ephemeral),
                },
                "resource": resource,
            }
        )

    def _webhook_message(self, record: InteractionRecord, message: str) -> MessageRecord:
        if message == "@original":
            if record.original is None or record.original.deleted:
                raise HttpError(404, "Unknown Message", 10008)
            return record.original
        found = next((m for m in record.messages if m.id == int(message) and not m.deleted), None)
        if found is None:
            raise HttpError(404, "Unknown Message", 10008)
        return found

    async def followup(self, request: web.Request, app: str, token: str) -> web.StreamResponse:
        self._check_app(app)
        body, parts = await self._read(request)
        record = self._interaction(token)
        now = time.monotonic()
        if record.callback is None:
            self._log(record, InteractionEvent("followup", now, body, 404))
            raise HttpError(404, "Unknown Webhook", 10015)
        channel_id = int(record.payload["channel_id"])
        attachments = self._attachments(channel_id, body, parts, [])
        message = self._message(
            channel_id,
            body,
            attachments,
            webhook_id=self.emu.world.application_id,
            interaction=_interaction_metadata(record),
        )
        self._log(record, InteractionEvent("followup", now, body, 200, attachments, message))
        if request.query.get("wait") in ("true", "1", "True"):
            return json_response(message.payload())
        return web.Response(status=204)

    async def get_webhook_message(self, request: web.Request, app: str, token: str, message: str) -> web.Response:
        self._check_app(app)
        return json_response(self._webhook_message(self._interaction(token), message).payload())

    async def edit_webhook_message(self, request: web.Request, app: str, token: str, message: str) -> web.Response:
        self._check_app(app)
        body, parts = await self._read(request)
        record = self._interaction(token)
        kind = "edit_original" if message == "@original" else "edit_followup"
        now = time.monotonic()
        try:
            target = self._webhook_message(record, message)
            added = self._edit(target, body, parts)
        except HttpError as error:
            self._log(record, InteractionEvent(kind, now, body, error.status))
            raise
        self._log(record, InteractionEvent(kind, now, body, 200, added, target))
        return json_response(target.payload())

    async def delete_webhook_message(self, request: web.Request, app: str, token: str, message: str) -> web.Response:
        self._check_app(app)
        record = self._interaction(token)
        target = self._webhook_message(record, message)
        self.emu.delete_message(target)
        kind = "delete_original" if message == "@original" else "delete_followup"
        self._log(record, InteractionEvent(kind, time.monotonic(), {}, 204, [], target))
        return web.Response(status=204)

    # -- channels and messages ------------------------------------------------------------------------
    async def get_channel(self, request: web.Request, channel_id: str) -> web.Response:
        self._channel_permissions(channel_id)
        guild = self.emu.world.guild_of_channel(int(channel_id))
        return json_response(guild.channels[int(channel_id)].payload())

    async def get_messages(self, request: web.Request, channel_id: str) -> web.Response:
        self._channel_permissions(channel_id, "read_message_history")
        limit = int(request.query.get("limit", 50))
        messages = [m for m in self.emu.channel_messages(int(channel_id)) if not m.ephemeral]
        return json_response([m.payload() for m in reversed(messages)][:limit])

    async def get_message(self, request: web.Request, channel_id: str, message_id: str) -> web.Response:
        self._channel_permissions(channel_id, "read_message_history")
        return json_response(self._message_in(channel_id, message_id).payload())

    async def create_message(self, request: web.Request, channel_id: str) -> web.Response:
        body, parts = await self._read(request)
        self._channel_permissions(channel_id, "send_messages")
        if body.get("attachments") or parts:
            self._channel_permissions(channel_id, "attach_files")
        if int(body.get("flags") or 0) & VOICE_MESSAGE:
            try:
                self._channel_permissions(channel_id, "send_voice_messages")
            except HttpError:
                raise HttpError(403, "Cannot send voice messages in this channel.", 50173) from None
        attachments = self._attachments(int(channel_id), body, parts, [])
        return json_response(self._message(int(channel_id), body, attachments).payload())

    async def edit_message(self, request: web.Request, channel_id: str, message_id: str) -> web.Response:
        body, parts = await self._read(request)
        message = self._message_in(channel_id, message_id)
        if message.author.id != self.emu.world.bot.id:
            raise HttpError(403, "Cannot edit a message authored by another user", 50005)
        self._edit(message, body, parts)
        return json_response(message.payload())

    async def delete_message(self, request: web.Request, channel_id: str, message_id: str) -> web.Response:
        message = self._message_in(channel_id, message_id)
        if message.author.id != self.emu.world.bot.id:
            self._channel_permissions(channel_id, "manage_messages")
        self.emu.delete_message(message)
        return web.Response(status=204)

    async def typing(self, request: web.Request, channel_id: str) -> web.Response:
        self._channel_permissions(channel_id, "send_messages")
        return web.Response(status=204)

    async def put_voice_status(self, request: web.Request, channel_id: str) -> web.Response:
        body, _ = await self._read(request)
        self._channel_permissions(channel_id, "set_voice_channel_status")
        channel = self.emu.world.guild_of_channel(int(channel_id)).channels[int(channel_id)]
        if channel.type != 2:
            raise HttpError(400, "Cannot set the status of a non-voice channel", 50024)
        channel.voice_status = body.get("status") or None
        return web.Response(status=204)

    async def request_upload(self, request: web.Request, channel_id: str) -> web.Response:
        body, _ = await self._read(request)
        self._channel_permissions(channel_id, "attach_files")
        answers = []
        for file in body.get("files", []):
            if int(file.get("file_size", 0)) > UPLOAD_LIMIT:
                raise HttpError(400, "Invalid Form Body", 50035)
            key = f"{secrets.token_hex(16)}/{urllib.parse.quote(file['filename'])}"  # as Discord's
            self.emu.pending_uploads.add(key)
            answers.append(
                {
                    "id": file.get("id", 0),
                    "upload_url": f"{self.emu.base_url}/upload/{key}",
                    "upload_filename": key,
                }
            )
        return json_response({"attachments": answers})

    async def upload(self, request: web.Request, key: str) -> web.Response:
        if key not in self.emu.pending_uploads:
            raise HttpError(404, "Unknown upload")
        self.emu.pending_uploads.discard(key)
        self.emu.uploads[key] = (await request.read(), request.headers.get("Content-Type"))
        return web.Response(status=200)

    async def download(self, request: web.Request, attachment_id: str) -> web.Response:
        attachment = self.emu.attachments.get(int(attachment_id))
        if attachment is None:
            raise HttpError(404, "Not Found")
        return web.Response(body=attachment.data, headers={"Content-Type": attachment.content_type})

    async def get_member(self, request: web.Request, guild_id: str, user_id: str) -> web.Response:
        guild = self.emu.world.guilds.get(int(guild_id))
        if guild is None or int(user_id) not in guild.members:
            raise HttpError(404, "Unknown Member", 10007)
        return json_response(guild.member(int(user_id)).payload())


def _interaction_metadata(record: InteractionRecord) -> Json:
    payload = record.payload
    return {
        "id": payload["id"],
        "type": payload["type"],
        "name": payload["data"].get("name"),
        "user": payload["member"]["user"],
        "authorizing_integration_owners": payload["authorizing_integration_owners"],
    }


def _validate_voice(body: Json, attachments: list[AttachmentRecord], flags: int) -> int:
    """Discord's voice-message rules; a non-audio part makes Discord ignore the voice fields."""
    if body.get("content") or body.get("embeds"):
        raise HttpError(400, "Voice messages do not support additional content.", 50159)
    if len(attachments) != 1:
        raise HttpError(400, "Voice messages must have a single audio attachment.", 50160)
    attachment = attachments[0]
    if not (attachment.part_content_type or "").startswith("audio/"):
        attachment.duration_secs = attachment.waveform = None
        return flags & ~VOICE_MESSAGE
    if attachment.duration_secs is None or attachment.waveform is None:
        raise HttpError(400, "Voice messages must have supporting metadata.", 50161)
    return flags
