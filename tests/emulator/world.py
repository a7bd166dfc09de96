"""The emulated Discord world: users, guilds, roles, channels, members, overwrites and voice states.

Every object renders itself as the JSON payload Discord would send. Changes made after the guild was
announced to the connected client are reported through ``World.on_event`` as gateway dispatches.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import discord

DISCORD_EPOCH_MS = 1420070400000
_increment = itertools.count()

Json = dict[str, Any]
PermissionsLike = int | discord.Permissions

ALL_PERMISSIONS = discord.Permissions.all().value
ADMINISTRATOR = discord.Permissions(administrator=True).value
VIEW_CHANNEL = discord.Permissions(view_channel=True).value
DEFAULT_EVERYONE_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    read_message_history=True,
    embed_links=True,
    attach_files=True,
    add_reactions=True,
    use_application_commands=True,
    send_voice_messages=True,
    connect=True,
    speak=True,
    use_voice_activation=True,
).value

ROLE_OVERWRITE = 0
MEMBER_OVERWRITE = 1
TEXT_CHANNEL = 0
VOICE_CHANNEL = 2


def snowflake() -> int:
    """A fresh, time-ordered Discord snowflake."""
    return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(_increment) & 0x3FFFFF)


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard a guild belongs to (Discord's formula)."""
    return (guild_id >> 22) % shard_count


def snowflake_on_shard(shard_id: int, shard_count: int) -> int:
    """A fresh snowflake that, as a guild id, lands on ``shard_id`` of ``shard_count`` (a few ms ahead)."""
    value = snowflake()
    ahead = (shard_id - shard_of(value, shard_count)) % shard_count
    return value + (ahead << 22)


def iso_now() -> str:
    """The current time as Discord's ISO 8601 timestamp."""
    return datetime.now(timezone.utc).isoformat()


def permission_value(permissions: PermissionsLike) -> int:
    """The integer value of ``permissions`` (an int or ``discord.Permissions``)."""
    return permissions.value if isinstance(permissions, discord.Permissions) else int(permissions)


@dataclass
class UserState:
    """A Discord user (also the bot's own user)."""

    id: int
    name: str
    bot: bool = False

    def payload(self) -> Json:
        """The user object."""
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass
class RoleState:
    """A guild role; the @everyone role has the guild's id."""

    id: int
    name: str
    permissions: int
    position: int = 0
    bot_id: int | None = None

    def payload(self) -> Json:
        """The role object."""
        data: Json = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.bot_id is not None,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class Overwrite:
    """A channel permission overwrite for a role (type 0) or a member (type 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def payload(self) -> Json:
        """The overwrite object."""
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


@dataclass
class ChannelState:
    """A guild text (type 0) or voice (type 2) channel."""

    id: int
    guild_id: int
    name: str
    type: int
    position: int
    overwrites: dict[int, Overwrite] = field(default_factory=dict)
    user_limit: int = 0
    voice_status: str | None = None  # a voice channel's status line (PUT /channels/{id}/voice-status)

    def payload(self) -> Json:
        """The channel object."""
        data: Json = {
            "id": str(self.id),
            "guild_id": str(self.guild_id),
            "name": self.name,
            "type": self.type,
            "position": self.position,
            "permission_overwrites": [o.payload() for o in self.overwrites.values()],
            "parent_id": None,
            "nsfw": False,
            "flags": 0,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        if self.type == VOICE_CHANNEL:
            data.update(bitrate=64000, user_limit=self.user_limit, rtc_region=None, video_quality_mode=1)
        else:
            data["topic"] = None
        return data


@dataclass
class MemberState:
    """A user's membership in a guild."""

    user: UserState
    roles: list[int]
    joined_at: str = field(default_factory=iso_now)
    nick: str | None = None

    @property
    def id(self) -> int:
        """The member's user id."""
        return self.user.id

    def payload(self, *, with_user: bool = True) -> Json:
        """The guild member object."""
        data: Json = {
            "roles": [str(r) for r in self.roles],
            "joined_at": self.joined_at,
            "nick": self.nick,
            "avatar": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = self.user.payload()
        return data


@dataclass
class VoiceStateEntry:
    """Which voice channel a member is in."""

    user_id: int
    channel_id: int
    session_id: str
    self_mute: bool = False
    self_deaf: bool = False


class GuildState:
    """A guild with roles, channels, members and voice states; changes are reported to the world."""

    def __init__(self, world: World, name: str, owner: UserState, guild_id: int | None = None) -> None:
        self.world = world
        self.id = guild_id or snowflake()
        self.name = name
        self.owner_id = owner.id
        self.roles: dict[int, RoleState] = {}
        self.channels: dict[int, ChannelState] = {}
        self.members: dict[int, MemberState] = {}
        self.voice_states: dict[int, VoiceStateEntry] = {}
        self.everyone_role = self._new_role("@everyone", DEFAULT_EVERYONE_PERMISSIONS, role_id=self.id)
        self.bot_role = self._new_role(world.bot.name, DEFAULT_EVERYONE_PERMISSIONS, bot_id=world.bot.id)
        self.add_member(owner)
        self.add_member(world.bot, roles=[self.bot_role])

    # -- construction ---------------------------------------------------------------------------------
    def _new_role(self, name: str, permissions: int, *, role_id: int | None = None, **kw: Any) -> RoleState:
        role = RoleState(role_id or snowflake(), name, permissions, position=len(self.roles), **kw)
        self.roles[role.id] = role
        return role

    def add_role(self, name: str, permissions: PermissionsLike = 0) -> RoleState:
        """Create a role (dispatches GUILD_ROLE_CREATE once the guild is announced)."""
        role = self._new_role(name, permission_value(permissions))
        self._event("GUILD_ROLE_CREATE", {"guild_id": str(self.id), "role": role.payload()})
        return role

    def set_role_permissions(self, role: RoleState, permissions: PermissionsLike) -> None:
        """Change a role's permissions (e.g. ``guild.bot_role``); dispatches GUILD_ROLE_UPDATE."""
        role.permissions = permission_value(permissions)
        self._event("GUILD_ROLE_UPDATE", {"guild_id": str(self.id), "role": role.payload()})

    def _add_channel(self, name: str, kind: int, user_limit: int = 0) -> ChannelState:
        channel = ChannelState(snowflake(), self.id, name, kind, len(self.channels), user_limit=user_limit)
        self.channels[channel.id] = channel
        self._event("CHANNEL_CREATE", channel.payload())
        return channel

    def add_text_channel(self, name: str = "general") -> ChannelState:
        """Create a text channel."""
        return self._add_channel(name, TEXT_CHANNEL)

    def add_voice_channel(self, name: str = "Voice", *, user_limit: int = 0) -> ChannelState:
        """Create a voice channel (``user_limit`` 0 = unlimited)."""
        return self._add_channel(name, VOICE_CHANNEL, user_limit)

    def delete_channel(self, channel: ChannelState) -> None:
        """Delete a channel (dispatches CHANNEL_DELETE)."""
        del self.channels[channel.id]
        self._event("CHANNEL_DELETE", channel.payload())

    def add_member(self, user: UserState | str, roles: Iterable[RoleState] = ()) -> MemberState:
        """Add a member, creating the user when given a name; dispatches GUILD_MEMBER_ADD."""
        if isinstance(user, str):
            user = self.world.add_user(user)
        member = MemberState(user, [r.id for r in roles])
        self.members[user.id] = member
        self._event("GUILD_MEMBER_ADD", {"guild_id": str(self.id), **member.payload()})
        return member

    def set_overwrite(
        self,
        channel: ChannelState,
        target: RoleState | MemberState | UserState,
        *,
        allow: PermissionsLike = 0,
        deny: PermissionsLike = 0,
    ) -> None:
        """Set a channel overwrite for a role or member (dispatches CHANNEL_UPDATE)."""
        kind = ROLE_OVERWRITE if isinstance(target, RoleState) else MEMBER_OVERWRITE
        channel.overwrites[target.id] = Overwrite(target.id, kind, permission_value(allow), permission_value(deny))
        self._event("CHANNEL_UPDATE", channel.payload())

    def _event(self, name: str, data: Json) -> None:
        self.world.on_event(self, name, data)

    # -- queries --------------------------------------------------------------------------------------
    @property
    def bot_member(self) -> MemberState | None:
        """The bot's membership, or None once it was removed."""
        return self.members.get(self.world.bot.id)

    def member(self, user_id: int) -> MemberState:
        """The member with this user id (KeyError when absent)."""
        return self.members[user_id]

    def permissions_for(self, user_id: int, channel_id: int | None = None) -> discord.Permissions:
        """Discord's permission computation: roles, administrator, then channel overwrites."""
        return discord.Permissions(self._permission_value(user_id, channel_id))

    def _permission_value(self, user_id: int, channel_id: int | None) -> int:
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        member = self.members[user_id]
        value = self.everyone_role.permissions
        for role_id in member.roles:
            value |= self.roles[role_id].permissions
        if value & ADMINISTRATOR:
            return ALL_PERMISSIONS
        if channel_id is None:
            return value
        overwrites = self.channels[channel_id].overwrites
        if everyone := overwrites.get(self.id):
            value = (value & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role_id in member.roles:
            if overwrite := overwrites.get(role_id):
                allow, deny = allow | overwrite.allow, deny | overwrite.deny
        value = (value & ~deny) | allow
        if (own := overwrites.get(user_id)) and own.type == MEMBER_OVERWRITE:
            value = (value & ~own.deny) | own.allow
        return value if value & VIEW_CHANNEL else 0

    def voice_state_payload(self, user_id: int, entry: VoiceStateEntry | None) -> Json:
        """A VOICE_STATE_UPDATE payload for ``user_id`` (``entry`` None = left voice)."""
        return {
            "guild_id": str(self.id),
            "channel_id": str(entry.channel_id) if entry else None,
            "user_id": str(user_id),
            "member": self.members[user_id].payload(),
            "session_id": entry.session_id if entry else "",
            "deaf": False,
            "mute": False,
            "self_deaf": entry.self_deaf if entry else False,
            "self_mute": entry.self_mute if entry else False,
            "self_video": False,
            "suppress": False,
            "request_to_speak_timestamp": None,
        }

    def payload(self) -> Json:
        """The GUILD_CREATE payload."""
        voice_states = []
        for user_id, entry in self.voice_states.items():
            state = self.voice_state_payload(user_id, entry)
            del state["guild_id"]
            voice_states.append(state)
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "max_members": 500000,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [r.payload() for r in self.roles.values()],
            "channels": [c.payload() for c in self.channels.values()],
            "members": [m.payload() for m in self.members.values()],
            "member_count": len(self.members),
            "voice_states": voice_states,
            "presences": [],
            "threads": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "large": False,
            "unavailable": False,
            "joined_at": self.members[self.world.bot.id].joined_at if self.bot_member else iso_now(),
        }


class World:
    """All users and guilds; ``on_event(guild, name, data)`` receives change dispatches."""

    def __init__(self, bot_name: str = "Magic 8 Ball") -> None:
        self.users: dict[int, UserState] = {}
        self.guilds: dict[int, GuildState] = {}
        self.bot = self.add_user(bot_name, bot=True)
        self.application_id = self.bot.id
        self.on_event: Callable[[GuildState, str, Json], None] = lambda guild, name, data: None

    def add_user(self, name: str, *, bot: bool = False) -> UserState:
        """Create a user."""
        user = UserState(snowflake(), name, bot)
        self.users[user.id] = user
        return user

    def add_guild(self, name: str, owner_id: int | None = None, guild_id: int | None = None) -> GuildState:
        """Create a guild the bot is a member of (owner: an existing user id or a new user)."""
        owner = self.users[owner_id] if owner_id is not None else self.add_user(f"{name} owner")
        guild = GuildState(self, name, owner, guild_id)
        self.guilds[guild.id] = guild
        return guild

    def guild_of_channel(self, channel_id: int) -> GuildState:
        """The guild that holds ``channel_id`` (KeyError when unknown)."""
        for guild in self.guilds.values():
            if channel_id in guild.channels:
                return guild
        raise KeyError(channel_id)
