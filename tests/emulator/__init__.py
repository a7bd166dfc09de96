"""A local Discord that the real discord.py 2.7.1 client talks to (REST, gateway, voice over TLS + UDP).

Usage (the ``emulator`` fixture in ``tests/emulator/fixtures.py`` is started and patched already)::

    async with DiscordEmulator() as emu:        # options: interaction_deadline=3.0, utterance_gap=0.5,
        with emu.patch():                       #   voice_heartbeat_interval_ms, privileged_intents,
                                                #   recommended_shards=1 (GET /gateway/bot's "shards")
                                                # Route.BASE and DEFAULT_GATEWAY -> emulator
            guild = emu.add_guild("Guild")      # bot is a member; GuildState
            text = guild.add_text_channel("general"); vc = guild.add_voice_channel("Voice")
            alice = guild.add_member("alice")   # MemberState (alice.id)
            client = commands.Bot(..., **emu.client_options())   # connector + guild_ready_timeout
            async with emu.run_client(client):  # start(emu.token), wait for on_ready, close on exit
                rec = await emu.slash_command(guild.id, text.id, alice.id, "ask", {"question": "Why?"})
                await rec.wait_for(lambda r: r.followups)

World (``emu.world``; guilds are announced with GUILD_CREATE after READY, or on the next loop turn when
added while connected; later changes dispatch CHANNEL_CREATE/UPDATE, GUILD_ROLE_*, GUILD_MEMBER_ADD):
    emu.bot / emu.add_user(name) / emu.add_guild(name, owner_id=None, shard=None) -> GuildState / emu.guild(id)
        (shard=(id, count): the guild's id lands on that shard)
    guild.add_text_channel(name), guild.add_voice_channel(name, user_limit=0) -> ChannelState
    guild.add_role(name, permissions), guild.set_role_permissions(role, permissions)
    guild.add_member(name_or_user, roles=()), guild.set_overwrite(channel, role_or_member, allow=, deny=)
    guild.bot_role / guild.everyone_role / guild.bot_member / guild.permissions_for(user_id, channel_id)
    await emu.remove_bot_from_guild(guild_id)                       # GUILD_DELETE

Triggers (await until the event was written to the socket):
    await emu.slash_command(guild_id, channel_id, user_id, "voice set", options, resolved=None)
        -> InteractionRecord; options: {name: value} typed from the synced schema (attachment values:
        (filename, bytes, content_type) or emu.attachment(...)), or a raw list of option objects
    await emu.autocomplete(guild_id, channel_id, user_id, "ask", {"question": "wi"}, focused="question")
    await emu.message_command(guild_id, channel_id, user_id, "Ask the Magic 8 Ball", target_message)
    await emu.post_message(channel_id, author_id, content="", attachments=[(name, bytes, type)],
                           voice=True, duration_secs=1.5, waveform=None) -> MessageRecord
    await emu.set_voice_state(guild_id, user_id, channel_id | None)  # bot + None: forced disconnect

Records:
    InteractionRecord: payload, dispatched_at, events (InteractionEvent: kind, at, body, status,
        attachments, message), callback, followups, edits, deferred, ephemeral, choices, original,
        messages, response_delay; await rec.wait_for_response(timeout), await rec.wait_for(pred, timeout)
        Callbacks later than emu.interaction_deadline (3 s) get 404 Unknown interaction (10062).
    MessageRecord: content, flags, voice, ephemeral, embeds, attachments (AttachmentRecord: filename,
        data, part_content_type, duration_secs, waveform, url), allowed_mentions, message_reference, edits
    emu.channel_messages(channel_id), await emu.wait_for_message(channel_id, predicate, timeout)
    emu.commands(guild_id=None), emu.command_syncs, emu.requests (RestRequest), emu.voice_requests
    emu.gateway: identifies, resumes, connections, heartbeats, close_codes, received, session
    emu.voice(guild_id) -> VoiceRecord: connections (ssrc, mode, secret_key, heartbeats, resumes,
        close_codes), speaking, packets, utterances (Utterance: packets, audio_packets, complete,
        sequence_gaps(), timestamp_errors(), continuous, trailing_silence, ogg_header_packets,
        arrival_gaps, duration, await decode() -> float32 (n, 2) at 48 kHz), dropped,
        decrypt_failures; await wait_for_utterances(n, timeout), await wait_connected(n, timeout)
    await emu.wait_for(predicate, timeout), await emu.wait_until_connected(timeout, guild_id=None)

DAVE (end-to-end encrypted voice, ``tests/emulator/dave.py``): voice is on DAVE protocol version 1 unless
``DiscordEmulator(dave=False)`` (version 0; a client offering no DAVE version is closed with 4017). Members who
``set_voice_state`` into a channel are far-end members with their own davey session; each RtpPacket carries
``frame`` (as sent), ``payload`` (the Opus the first far-end member decrypted), ``e2e`` ("e2e", "passthrough",
"plain", "undecryptable") and ``secured``.
    emu.call(channel_id) -> DaveCall: participants, far_end (FarEndMember: session, heard[sender] -> Hearing with
        outcomes, errors), members (by leaf), epoch, secured, commits (CommitOutcome), invalid_reports, executed,
        privacy_code; faults: call.withheld_welcomes.add(user_id), call.send_bad_commit(user_id),
        call.downgrade() (to version 0), call.upgrade()

Shards: each IDENTIFY's ``shard`` [id, count] opens that shard's session (``emu.gateway.sessions[id]``;
``emu.gateway.session`` is shard 0's, an unsharded client's only one). A guild belongs to shard
``(guild_id >> 22) % count``: READY, GUILD_CREATE, every event of the guild, its interactions and its voice
(op 4 answers) go to that shard's session only; op 4 or 8 about a guild sent on another shard's connection is
ignored and kept in ``emu.gateway.misrouted``. Counters (identifies, resumes, ...) add up all shards.

Faults:
    emu.fail_rest(method, path_regex, status=500|429, times=1, retry_after=0.1, is_global=False)
    await emu.close_voice(guild_id, code=4006|4015), emu.udp_blackhole(guild_id, enabled=True)
    await emu.disconnect_gateway(resume=True, shard_id=None)  # close 4000 -> RESUME; resume=False ->
                                               # INVALID_SESSION; every shard, or one
    emu.request_reconnect(shard_id=None)       # op 7
    async with emu.gateway_down(): ...         # every shard closed (4000); no HELLO until the block ends

Discord behaviour kept: 401 on a wrong bot token, 403 Missing Permissions (50013) on channel posts without
SEND_MESSAGES/ATTACH_FILES, 50173 without SEND_VOICE_MESSAGES, voice-message rules (50159/50160/50161,
no edits 50162; a non-``audio/*`` part makes the voice fields ignored), op 4 to a channel without
CONNECT (or full) goes unanswered, MESSAGE_CREATE without the message-content intent has no content or
attachments unless the bot is mentioned, privileged intents can be refused (close 4014).
"""

from .records import AttachmentRecord, InteractionEvent, InteractionRecord, MessageRecord
from .server import DiscordEmulator
from .voice import RtpPacket, Utterance, VoiceRecord
from .world import ChannelState, GuildState, MemberState, RoleState, UserState

__all__ = [
    "AttachmentRecord",
    "ChannelState",
    "DiscordEmulator",
    "GuildState",
    "InteractionEvent",
    "InteractionRecord",
    "MemberState",
    "MessageRecord",
    "RoleState",
    "RtpPacket",
    "UserState",
    "Utterance",
    "VoiceRecord",
]
