"""/join, /leave, /stop, /privacy; one player per guild; auto-leave when the channel empties or stays idle.

Discord voice is end-to-end encrypted (DAVE, through discord.py's `davey` sessions): without `davey` voice is
disabled at start-up, and a connection refused for its encryption ends /join with one sentence."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

import discord
import discord.voice_client
from discord import app_commands
from discord.errors import ConnectionClosed
from discord.ext import commands
from discord.voice_state import VoiceConnectionState

from bot.discord_io import tell
from bot.playback import RECONNECT_POLL_SECONDS, GuildPlayer, VoiceLink
from bot.voice_receive import ListeningVoiceClient

if TYPE_CHECKING:
    from bot.client import MagicBot

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 20.0
DAVE_REQUIRED = 4017  # Discord's close code for a voice client without end-to-end encryption
VoiceChannel = discord.VoiceChannel | discord.StageChannel


class Listens(Protocol):
    """Questions being asked aloud in a guild's voice channel."""

    def count(self, guild_id: int) -> int: ...
    def stop(self, guild_id: int) -> None: ...


def voice_unavailable() -> str | None:
    """Why this installation cannot use Discord voice at all, as a sentence; None when it can."""
    if not discord.voice_client.has_dave:
        return (
            "Voice is disabled on this bot: Discord requires end-to-end encrypted voice (DAVE), "
            "and the `davey` package it needs is not installed."
        )
    if not discord.voice_client.has_nacl:
        return "Voice is disabled on this bot: the `PyNaCl` package Discord voice needs is not installed."
    return None


class EncryptedVoiceError(Exception):
    """The voice connection failed on its end-to-end encryption: refused with 4017, or a DAVE message failed."""

    def __init__(self, code: int | None, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class _EncryptedVoiceState(VoiceConnectionState):
    """discord.py's connection flow, except that an encryption failure in the handshake is final: discord.py
    would retry a 4017 close for the whole connect timeout."""

    async def _handshake_websocket(self) -> None:
        try:
            await super()._handshake_websocket()
        except ConnectionClosed as exc:
            if exc.code == DAVE_REQUIRED:
                raise EncryptedVoiceError(exc.code, "Discord requires end-to-end encrypted voice (DAVE)") from exc
            raise
        except ValueError as exc:  # davey refused the session's DAVE set-up
            raise EncryptedVoiceError(None, str(exc)) from exc


class EncryptedVoiceClient(ListeningVoiceClient):
    """The bot's voice client (see `_EncryptedVoiceState`), which can also hear members (`ListeningVoiceClient`)."""

    def create_connection_state(self) -> VoiceConnectionState:
        return _EncryptedVoiceState(self, hook=self._on_voice_event)


def privacy_code_groups(code: str) -> str:
    """A voice privacy code as Discord clients show it: groups of five digits."""
    return " ".join(code[i : i + 5] for i in range(0, len(code), 5))


def connect_problem(channel: VoiceChannel, me: discord.Member) -> str | None:
    """Why the bot can't speak in `channel`, as a sentence; None when it can."""
    perms = channel.permissions_for(me)
    missing = [
        name
        for name, granted in (("View Channel", perms.view_channel), ("Connect", perms.connect), ("Speak", perms.speak))
        if not granted
    ]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        return f"I can't speak in {channel.mention}: I need the {' and '.join(missing)} permission{plural} there."
    if channel.user_limit and len(channel.voice_states) >= channel.user_limit and not perms.move_members:
        return f"{channel.mention} is full, so I can't join it."
    return None


def may_control(member: discord.Member, channel: discord.abc.Connectable | None) -> bool:
    """The voice bots' rule: members in the bot's voice channel, or holding Move Members or Manage Server."""
    perms = member.guild_permissions
    in_channel = channel is not None and member.voice is not None and member.voice.channel == channel
    return in_channel or perms.move_members or perms.manage_guild


def not_yours(channel: discord.abc.Connectable | None) -> str:
    """The refusal for members who may not control the voice."""
    where = channel.mention if isinstance(channel, VoiceChannel) else "my voice channel"
    return f"Only members in {where}, or with the Move Members permission, can do that."


def listeners(channel: VoiceChannel, me: discord.Member) -> int:
    """People (not bots) in the channel besides the bot."""
    guild = channel.guild
    count = 0
    for user_id in channel.voice_states:
        member = guild.get_member(user_id)
        count += user_id != me.id and not (member is not None and member.bot)
    return count


class VoiceCog(commands.Cog, name="Voice"):
    """Voice connections and the per-guild answer queues."""

    def __init__(self, bot: MagicBot) -> None:
        self.bot = bot
        self._players: dict[int, GuildPlayer] = {}
        self._channels: dict[int, int] = {}  # guild id → the voice channel the bot means to be in
        self.listens: Listens | None = None  # questions being asked aloud (the listening cog), for /stop
        self.unavailable = voice_unavailable()

    async def cog_load(self) -> None:
        if self.unavailable:
            log.warning(self.unavailable)

    @property
    def answers_queued(self) -> int:
        """Answers waiting or being spoken in all the guilds' players."""
        return sum(player.ahead for player in self._players.values())

    def player(self, guild_id: int) -> GuildPlayer | None:
        """The guild's player while the bot is in one of its voice channels."""
        return self._players.get(guild_id) if guild_id in self._channels else None

    async def cog_unload(self) -> None:
        """Stop every player and leave voice. The bot closes its cogs before its gateway, so Discord's confirmation
        of each leave still arrives; once the client itself is closing, discord.py no longer reads it and waits
        out the whole connect timeout per voice connection."""
        for guild_id in list(self._players):
            await self._drop(guild_id)
        leaving = [client.disconnect(force=True) for client in list(self.bot.voice_clients)]
        for error in await asyncio.gather(*leaving, return_exceptions=True):
            if isinstance(error, Exception):  # the client's own close disconnects it again
                log.warning("Leaving voice failed: %r", error)

    async def join(self, channel: VoiceChannel) -> None:
        """Connect (or move) to `channel` and get the guild's player going."""
        guild = channel.guild
        client = guild.voice_client
        if isinstance(client, discord.VoiceClient) and client.is_connected():
            await client.move_to(channel, timeout=CONNECT_TIMEOUT)  # logs and returns on a timeout
            if not client.is_connected() or getattr(client.channel, "id", None) != channel.id:
                raise asyncio.TimeoutError(f"the move to {channel.id} did not complete")
        else:
            if client is not None:
                await client.disconnect(force=True)
            # A bot that may listen joins undeafened, so members can see that it can hear them.
            listen = self.bot.settings.listen_enabled
            await channel.connect(timeout=CONNECT_TIMEOUT, self_deaf=not listen, cls=EncryptedVoiceClient)
        self._channels[guild.id] = channel.id
        self.bot.dispatch("voice_joined", channel)
        if guild.id not in self._players:
            self._players[guild.id] = GuildPlayer(
                connect=lambda: self._link(guild.id),
                synthesize=lambda text, voice: self.bot.synthesize(guild.id, text, voice),
                make_source=lambda text: self.bot.new_source(text),
                queue_size=self.bot.settings.guild_queue_size,
                idle_seconds=self.bot.settings.voice_idle_seconds,
                on_idle=lambda: self._idle(guild.id),
            )
        self._players[guild.id].start()

    async def leave(self, guild: discord.Guild) -> None:
        """Stop speaking, clear the queue and disconnect."""
        await self._drop(guild.id)
        if guild.voice_client is not None:
            await guild.voice_client.disconnect(force=True)

    def _channel(self, guild: discord.Guild) -> discord.abc.Connectable | None:
        """The voice channel the bot is in (or means to be in) in this guild."""
        if guild.voice_client is not None:
            return guild.voice_client.channel
        return guild.get_channel(self._channels.get(guild.id, 0))  # type: ignore[return-value]

    async def _idle(self, guild_id: int) -> None:
        guild = self.bot.get_guild(guild_id)
        if guild is not None:
            log.info("Idle in voice for %.0f s: leaving guild %s", self.bot.settings.voice_idle_seconds, guild_id)
            await self.leave(guild)

    async def _drop(self, guild_id: int) -> None:
        """Forget the guild's channel and close its player (waiting answers end as stopped)."""
        self._channels.pop(guild_id, None)
        self.bot.dispatch("voice_left", guild_id)
        player = self._players.pop(guild_id, None)
        if player is not None:
            await player.close()

    async def _link(self, guild_id: int) -> VoiceLink | None:
        """The guild's connected voice client, waiting out a reconnect after a drop; None once it is gone."""
        guild = self.bot.get_guild(guild_id)
        client = guild.voice_client if guild is not None and guild_id in self._channels else None
        if not isinstance(client, discord.VoiceClient):
            return None
        deadline = time.monotonic() + self.bot.settings.voice_reconnect_seconds
        while not client.is_connected() and time.monotonic() < deadline:  # polled: no thread blocks on it
            await asyncio.sleep(RECONNECT_POLL_SECONDS)
        if client.is_connected():
            return client
        log.info("The voice connection in guild %s did not come back", guild_id)
        return None

    @app_commands.command(name="join", description="Join your voice channel and speak the answers there.")
    @app_commands.guild_only()
    async def join_command(self, interaction: discord.Interaction) -> None:
        guild = interaction.guild
        member = interaction.user
        assert guild is not None and isinstance(member, discord.Member)
        channel = member.voice.channel if member.voice else None
        if self.unavailable:
            await tell(interaction, self.unavailable)
            return
        if channel is None:
            await tell(interaction, "Join a voice channel first, then use /join.")
            return
        problem = connect_problem(channel, guild.me)
        if problem:
            await tell(interaction, problem)
            return
        client = guild.voice_client
        if client is not None and client.channel == channel and guild.id in self._channels:
            await tell(interaction, f"I'm already in {channel.mention}.")
            return
        player = self.player(guild.id)
        if client is not None and player is not None and player.ahead and not may_control(member, client.channel):
            await tell(interaction, f"I'm speaking elsewhere right now. {not_yours(client.channel)}")
            return
        await interaction.response.defer(thinking=True)
        try:
            await self.join(channel)
        except EncryptedVoiceError as exc:
            code = f" (close code {exc.code})" if exc.code else ""
            log.warning("Joining %s failed on end-to-end encryption%s: %s", channel.id, code, exc)
            sentence = (
                f"I couldn't connect to {channel.mention}: Discord requires end-to-end encrypted voice "
                "and setting up the encryption failed."
            )
            await tell(interaction, sentence, replace=True)
            return
        except (asyncio.TimeoutError, discord.ClientException, discord.HTTPException) as exc:
            log.warning("Joining %s failed: %s", channel.id, exc)
            await tell(interaction, f"I couldn't connect to {channel.mention}; please try again.", replace=True)
            return
        note = self.bot.speech_status.note
        await interaction.edit_original_response(
            content=f"🔊 Joined {channel.mention}: answers are spoken here now." + (f" {note}" if note else "")
        )

    @app_commands.command(name="privacy", description="Show the voice privacy code of the bot's call.")
    @app_commands.guild_only()
    async def privacy_command(self, interaction: discord.Interaction) -> None:
        guild = interaction.guild
        assert guild is not None
        client = guild.voice_client
        if not isinstance(client, discord.VoiceClient) or not client.is_connected():
            await tell(interaction, "I'm not in a voice channel.")
            return
        code = client.voice_privacy_code
        if code is None:
            sentence = (
                f"My voice in {client.channel.mention} is not end-to-end encrypted yet: "
                "the encrypted call starts once someone else is in the channel; try again in a moment."
            )
        else:
            sentence = (
                f"🔒 My voice in {client.channel.mention} is end-to-end encrypted. Privacy code: "
                f"`{privacy_code_groups(code)}`; it matches the code your Discord client shows for the call."
            )
        await tell(interaction, sentence)

    @app_commands.command(name="leave", description="Leave the voice channel.")
    @app_commands.guild_only()
    async def leave_command(self, interaction: discord.Interaction) -> None:
        guild = interaction.guild
        assert guild is not None and isinstance(interaction.user, discord.Member)
        client = guild.voice_client
        if client is None and guild.id not in self._channels:
            await tell(interaction, "I'm not in a voice channel.")
            return
        if not may_control(interaction.user, self._channel(guild)):
            await tell(interaction, not_yours(self._channel(guild)))
            return
        await interaction.response.defer(thinking=True)
        channel = client.channel if client is not None else None
        await self.leave(guild)
        await interaction.edit_original_response(content=f"👋 Left {channel.mention if channel else 'voice'}.")

    @app_commands.command(name="stop", description="Stop the answer being spoken and clear the queue.")
    @app_commands.guild_only()
    async def stop_command(self, interaction: discord.Interaction) -> None:
        guild = interaction.guild
        assert guild is not None and isinstance(interaction.user, discord.Member)
        player = self.player(guild.id)
        listens = self.listens.count(guild.id) if self.listens is not None else 0
        if (player is None or not player.ahead) and not listens:
            await tell(interaction, "Nothing is being spoken right now.")
            return
        if not may_control(interaction.user, self._channel(guild)):
            await tell(interaction, not_yours(self._channel(guild)))
            return
        if self.listens is not None and listens:
            self.listens.stop(guild.id)
        dropped = player.stop() if player is not None else 0
        plural = "s" if dropped != 1 else ""
        listened = " and stopped listening" if listens else ""
        await interaction.response.send_message(f"⏹️ Stopped {dropped} answer{plural}{listened}.")

    @commands.Cog.listener()
    async def on_voice_state_update(
        self, member: discord.Member, before: discord.VoiceState, after: discord.VoiceState
    ) -> None:
        guild = member.guild
        if guild.id not in self._channels:
            return
        if self.bot.user is not None and member.id == self.bot.user.id:
            if after.channel is not None:  # moved; a disconnect is discord.py's to handle (it may reconnect)
                self._channels[guild.id] = after.channel.id
            return
        channel = guild.get_channel(self._channels[guild.id])
        if (
            isinstance(channel, (discord.VoiceChannel, discord.StageChannel))
            and before.channel == channel
            and after.channel != channel
            and not listeners(channel, guild.me)
        ):
            log.info("Voice channel %s is empty: leaving", channel.id)
            await self.leave(guild)

    @commands.Cog.listener()
    async def on_shard_ready(self, shard_id: int) -> None:
        """A shard's new gateway session ends Discord's voice sessions of its guilds: rejoin the channels the
        bot was speaking in (dropping the old session's voice clients, which discord.py keeps per shard)."""
        for guild_id, channel_id in list(self._channels.items()):
            guild = self.bot.get_guild(guild_id)
            channel = guild.get_channel(channel_id) if guild is not None else None
            if guild is None or guild.shard_id != shard_id or not isinstance(channel, VoiceChannel):
                continue
            log.info("New gateway session: rejoining voice channel %s", channel_id)
            try:
                if guild.voice_client is not None:
                    await guild.voice_client.disconnect(force=True)
                await self.join(channel)
            except Exception as exc:  # each guild on its own: one failure never stops the others' rejoins
                log.warning("Rejoining voice channel %s failed: %s", channel_id, exc)
                await self._drop(guild_id)

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        log.info("Removed from guild %s", guild.id)
        await self._drop(guild.id)


async def setup(bot: MagicBot) -> None:
    await bot.add_cog(VoiceCog(bot))
