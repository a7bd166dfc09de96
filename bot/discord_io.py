"""Discord sending helpers that discord.py 2.7.1 lacks or that every cog needs."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import discord
from discord.http import handle_message_parameters

from audio.voice_message import VoiceMessage

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
EMBED_COLOUR = discord.Colour.dark_purple()


class _VoiceFile(discord.File):
    """An OGG/Opus attachment carrying the voice-message fields Discord needs."""

    def __init__(self, message: VoiceMessage) -> None:
        super().__init__(io.BytesIO(message.ogg), filename=message.FILENAME)
        self._duration = message.duration_secs
        self._waveform = message.waveform_b64()

    def to_dict(self, index: int) -> dict[str, Any]:
        return {**super().to_dict(index), "duration_secs": self._duration, "waveform": self._waveform}


async def send_voice_message(
    channel: discord.abc.Messageable, message: VoiceMessage, *, reply_to: discord.Message | None = None
) -> discord.Message:
    """Post `message` as a native voice message (optionally as a reply, pinging nobody).

    Needs Send Messages, Attach Files and Send Voice Messages in the channel (Read Message History to reply).
    """
    target = await channel._get_channel()
    state = target._state
    params = handle_message_parameters(
        file=_VoiceFile(message),
        flags=discord.MessageFlags(voice=True),
        allowed_mentions=NO_PINGS,
        message_reference=reply_to.to_reference(fail_if_not_exists=False).to_message_reference_dict()
        if reply_to is not None
        else discord.utils.MISSING,
    )
    assert params.multipart is not None
    for part in params.multipart:
        if part["name"].startswith("files["):
            part["content_type"] = message.CONTENT_TYPE  # Discord ignores the voice fields on application/octet-stream
    with params:
        data = await state.http.send_message(target.id, params=params)
    return state.create_message(channel=target, data=data)


def audio_file(message: VoiceMessage, filename: str = "answer.ogg") -> discord.File:
    """The answer as a plain audio attachment (when voice messages are not allowed)."""
    return discord.File(io.BytesIO(message.ogg), filename=filename)


def can_send_voice_messages(permissions: discord.Permissions) -> bool:
    """Whether a native voice message can be posted with these channel permissions."""
    return permissions.send_messages and permissions.attach_files and permissions.send_voice_messages


async def tell(interaction: discord.Interaction, sentence: str, *, replace: bool = False) -> None:
    """Answer the interaction with an ephemeral sentence, whatever state its response is in.

    `replace` first deletes a public (deferred) response, so that only the asker sees what went wrong.
    """
    try:
        if not interaction.response.is_done():
            await interaction.response.send_message(sentence, ephemeral=True, allowed_mentions=NO_PINGS)
            return
        if replace:
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
        await interaction.followup.send(sentence, ephemeral=True, allowed_mentions=NO_PINGS)
    except discord.HTTPException as exc:
        log.warning("Could not tell the user %r: %s", sentence, exc)
