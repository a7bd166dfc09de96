"""DAVE (Discord's end-to-end encrypted voice, protocol version 1) in the emulator: the voice gateway's side of a
call's MLS group and the far-end members who listen.

`DaveCall` is the delivery service of one voice channel (the MLS group id is the channel id): it sends its external
sender (op 25), turns key packages (op 26) into external Add proposals (op 27), picks the first valid commit of an
epoch from a committing member (op 28), announces it (op 29) and forwards the welcome to the joiners (op 30), runs
the transitions (ops 21-24) and handles invalid commit reports (op 31), as the DAVE whitepaper describes.
Participants are the bot's voice connections and `FarEndMember`s; both get frames through ``post_json`` and
``post_binary`` and answer by calling the call's handlers.

Committing members: the bot commits whenever it can (it is in the group, or the group is being created); far-end
members' commits are taken only when no bot can commit. So the bot exercises both paths: it commits when members
join it, and it is welcomed when it joins members who already formed a group.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass, field
from typing import Protocol

import davey

from .mls import ExternalSender, proposal_ref, proposals_payload, split_commit_welcome
from .opus import OPUS_SILENCE
from .records import Notifier
from .world import Json

PROTOCOL_VERSION = 1
MARKER = b"\xfa\xfa"  # the end of every DAVE frame
# What a listener made of a frame: decrypted with the group's key, a plain frame its decryptor let through, a
# plain frame in a call without DAVE, or a frame it could not decrypt.
E2E, PASSTHROUGH, PLAIN, UNDECRYPTABLE = "e2e", "passthrough", "plain", "undecryptable"
# Voice gateway opcodes
CLIENTS_CONNECT, CLIENT_DISCONNECT = 11, 13
PREPARE_TRANSITION, EXECUTE_TRANSITION, TRANSITION_READY, PREPARE_EPOCH = 21, 22, 23, 24
EXTERNAL_SENDER, KEY_PACKAGE, PROPOSALS, COMMIT_WELCOME, ANNOUNCE_COMMIT, WELCOME, INVALID_COMMIT_WELCOME = range(
    25, 32
)


class Participant(Protocol):
    """A client in the call, as the gateway reaches it."""

    user_id: int

    def post_json(self, op: int, data: Json) -> None:
        """Queue a JSON frame to the client."""

    def post_binary(self, op: int, payload: bytes) -> None:
        """Queue a binary frame (sequence, opcode, payload) to the client."""


@dataclass
class _Proposal:
    ref: bytes
    message: bytes
    add: int | None = None  # the user id an Add proposal adds
    remove: int | None = None  # the leaf index a Remove proposal removes


@dataclass
class _Transition:
    protocol_version: int
    waiting: set[int]
    timer: asyncio.TimerHandle | None = None


@dataclass
class CommitOutcome:
    """A commit a participant sent: whether the gateway announced it, and why not."""

    user_id: int
    accepted: bool
    reason: str = ""
    transition_id: int | None = None


class DaveCall:
    """The gateway side of one voice channel's DAVE session; see the module docstring."""

    def __init__(
        self,
        channel_id: int,
        notifier: Notifier,
        protocol_version: int = PROTOCOL_VERSION,
        transition_timeout: float = 5.0,
    ) -> None:
        self.channel_id = channel_id
        self._notifier = notifier
        self._timeout = transition_timeout
        self.external_sender = ExternalSender()
        self.protocol_version = protocol_version
        self.participants: dict[int, Participant] = {}
        self.leaves: list[int | None] = []  # the group's members by leaf index (user ids)
        self.epoch = 0  # 0: no established group
        self.secured = False  # a transition to the current group was executed: senders use its key
        self.key_packages: dict[int, bytes] = {}
        self.flagged: set[int] = set()  # reported an invalid commit/welcome: no longer a committing member
        self._inflight: dict[int, list[_Proposal]] = {}  # by recipient
        self._transitions: dict[int, _Transition] = {}
        self._last_transition = 0
        self.withheld_welcomes: set[int] = set()  # users whose welcome the gateway drops (a test's fault)
        self.commits: list[CommitOutcome] = []
        self.invalid_reports: list[tuple[int, int]] = []  # (user id, transition id) of op 31
        self.executed: list[tuple[int, int]] = []  # (transition id, protocol version)

    # -- state ----------------------------------------------------------------------------------------
    @property
    def members(self) -> list[int]:
        """User ids in the established group."""
        return [user for user in self.leaves if user is not None]

    @property
    def far_end(self) -> list[FarEndMember]:
        """The far-end members in the call, in joining order."""
        return [p for p in self.participants.values() if isinstance(p, FarEndMember)]

    @property
    def privacy_code(self) -> str | None:
        """The voice privacy code the sessions of the far-end members in the group show (None without a group, or
        when they disagree)."""
        codes = {m.session.voice_privacy_code for m in self.far_end if m.session and m.user_id in self.members}
        return codes.pop() if len(codes) == 1 else None

    def _committing(self, user_id: int) -> bool:
        if user_id in self.flagged:
            return False
        if not isinstance(self.participants.get(user_id), FarEndMember):
            return True
        bots = [u for u, p in self.participants.items() if not isinstance(p, FarEndMember) and u not in self.flagged]
        if self.epoch:
            return not any(bot in self.members for bot in bots)
        return not any(bot in self.key_packages for bot in bots)

    def _recipients(self) -> list[int]:
        """Who gets proposals: the group's members, or every pending member while the group is being created."""
        users = self.members if self.epoch else list(self.key_packages)
        return [u for u in users if u in self.participants and u not in self.flagged]

    # -- membership -----------------------------------------------------------------------------------
    def join(self, participant: Participant) -> None:
        """A client entered the call (after op 4 for the bot): clients_connect, then the external sender."""
        if (old := self.participants.get(participant.user_id)) is not None and old is not participant:
            self.leave(participant.user_id)
        others = list(self.participants)
        self.participants[participant.user_id] = participant
        for user in others:
            self.participants[user].post_json(CLIENTS_CONNECT, {"user_ids": [str(participant.user_id)]})
        if others:
            participant.post_json(CLIENTS_CONNECT, {"user_ids": [str(u) for u in others]})
        if self.protocol_version:
            participant.post_binary(EXTERNAL_SENDER, self.external_sender.package)
        self._notifier.notify()

    def leave(self, user_id: int) -> None:
        """A client left the call: its leaf is proposed for removal, or the sole remaining member is reset."""
        if self.participants.pop(user_id, None) is None:
            return
        self.key_packages.pop(user_id, None)
        self.flagged.discard(user_id)
        self._inflight.pop(user_id, None)
        for proposals in self._inflight.values():
            proposals[:] = [p for p in proposals if p.add != user_id]
        for transition in self._transitions.values():
            transition.waiting.discard(user_id)
        for participant in self.participants.values():
            participant.post_json(CLIENT_DISCONNECT, {"user_id": str(user_id)})
        if user_id in self.members:
            remaining = [u for u in self.members if u != user_id]
            if len(remaining) <= 1:
                self._reset_group()
                for user in remaining:  # sole member reset: a new group when someone joins again
                    self.participants[user].post_json(
                        PREPARE_EPOCH, {"protocol_version": self.protocol_version, "epoch": 1}
                    )
                    self.participants[user].post_json(
                        PREPARE_TRANSITION, {"protocol_version": self.protocol_version, "transition_id": 0}
                    )
            else:
                self._propose(remaining, remove=self.leaves.index(user_id))
        self._ready_transitions()
        self._notifier.notify()

    def _reset_group(self) -> None:
        self.leaves, self.epoch, self.secured = [], 0, False
        self._inflight.clear()

    # -- proposals and commits ------------------------------------------------------------------------
    def _propose(self, recipients: list[int], *, add: int | None = None, remove: int | None = None) -> None:
        """Send one external proposal to ``recipients`` (the group's members share one proposal)."""
        if add is not None:
            message = self.external_sender.propose_add(self.channel_id, self.epoch, self.key_packages[add])
        else:
            assert remove is not None
            message = self.external_sender.propose_remove(self.channel_id, self.epoch, remove)
        proposal = _Proposal(proposal_ref(message), message, add, remove)
        for user in recipients:
            self._inflight.setdefault(user, []).append(proposal)
            self.participants[user].post_binary(PROPOSALS, proposals_payload([message]))

    def _propose_pending(self) -> None:
        """Add proposals for every pending member not proposed yet."""
        if not self.protocol_version:
            return
        recipients = self._recipients()
        for user in self.key_packages:
            if user in self.members:
                continue
            unproposed = [r for r in recipients if r != user and user not in {p.add for p in self._inflight.get(r, [])}]
            if self.epoch and unproposed:  # the group's members share one proposal
                self._propose(unproposed, add=user)
            elif not self.epoch:  # while the group is being created, each pending member gets its own
                for recipient in unproposed:
                    self._propose([recipient], add=user)

    def key_package(self, user_id: int, key_package: bytes) -> None:
        """Op 26: the client's key package; propose adding it."""
        if user_id not in self.participants or not self.protocol_version:
            return
        self.key_packages[user_id] = key_package
        self._propose_pending()
        self._notifier.notify()

    def commit_welcome(self, user_id: int, data: bytes) -> None:
        """Op 28: announce the first valid commit of the epoch (op 29) and welcome the joiners (op 30)."""
        outcome = self._accept(user_id, data)
        self.commits.append(outcome)
        self._notifier.notify()

    def _accept(self, user_id: int, data: bytes) -> CommitOutcome:
        try:
            commit, welcome = split_commit_welcome(data)
        except ValueError as error:
            return CommitOutcome(user_id, False, f"unreadable: {error}")
        proposals = self._inflight.get(user_id, [])
        if not self._committing(user_id):
            return CommitOutcome(user_id, False, "not a committing member")
        if commit.group_id != self.channel_id or commit.epoch != self.epoch:
            return CommitOutcome(user_id, False, f"epoch {commit.epoch}, the group is at {self.epoch}")
        if self.epoch and (user_id not in self.leaves or self.leaves.index(user_id) != commit.sender_leaf):
            return CommitOutcome(user_id, False, "not from the sender's leaf")
        if not proposals or set(commit.proposal_refs) != {p.ref for p in proposals}:
            return CommitOutcome(user_id, False, "does not reference exactly the proposals in flight")
        before = self.members
        leaves = list(self.leaves) if self.epoch else [user_id]
        for proposal in proposals:
            if proposal.remove is not None:
                leaves[proposal.remove] = None
        added = [p.add for p in proposals if p.add is not None]
        for user in added:
            if None in leaves:
                leaves[leaves.index(None)] = user
            else:
                leaves.append(user)
        while leaves and leaves[-1] is None:
            leaves.pop()
        self.leaves, self.epoch, self.secured = leaves, self.epoch + 1, False
        self.flagged &= set(self.members)
        announce_to = [u for u in before if u in self.members] if before else [user_id]
        self._inflight.clear()
        transition_id = self._new_transition(PROTOCOL_VERSION, set(self.members))
        for user in announce_to:
            self.participants[user].post_binary(ANNOUNCE_COMMIT, struct.pack(">H", transition_id) + commit.message)
        for user in added:
            self.key_packages.pop(user, None)
            if welcome is not None and user not in self.withheld_welcomes and user in self.participants:
                self.participants[user].post_binary(WELCOME, struct.pack(">H", transition_id) + welcome)
        self._propose_pending()
        return CommitOutcome(user_id, True, transition_id=transition_id)

    # -- transitions ----------------------------------------------------------------------------------
    def _next_transition_id(self) -> int:
        self._last_transition = self._last_transition % 0xFFFF + 1
        return self._last_transition

    def _new_transition(self, protocol_version: int, waiting: set[int]) -> int:
        transition_id = self._next_transition_id()
        transition = _Transition(protocol_version, waiting)
        transition.timer = asyncio.get_running_loop().call_later(self._timeout, self._execute, transition_id)
        self._transitions[transition_id] = transition
        return transition_id

    def ready(self, user_id: int, transition_id: int) -> None:
        """Op 23: the client is ready for the transition; execute it once everyone is."""
        if (transition := self._transitions.get(transition_id)) is not None:
            transition.waiting.discard(user_id)
            self._ready_transitions()

    def _ready_transitions(self) -> None:
        for transition_id, transition in list(self._transitions.items()):
            if not transition.waiting:
                self._execute(transition_id)

    def _execute(self, transition_id: int) -> None:
        """Op 22 to every participant (after all were ready, or after the timeout as on Discord)."""
        transition = self._transitions.pop(transition_id, None)
        if transition is None:
            return
        if transition.timer is not None:
            transition.timer.cancel()
        for participant in self.participants.values():
            participant.post_json(EXECUTE_TRANSITION, {"transition_id": transition_id})
        self.executed.append((transition_id, transition.protocol_version))
        if transition.protocol_version == 0:
            self.protocol_version = 0
            self._reset_group()
            self.key_packages.clear()
        else:
            self.secured = bool(self.epoch)
        self._notifier.notify()

    def invalid_commit_welcome(self, user_id: int, transition_id: int) -> None:
        """Op 31: the client could not process a commit or welcome; propose its removal so it can be re-added
        with the new key package it sends next."""
        self.invalid_reports.append((user_id, transition_id))
        for transition in self._transitions.values():
            transition.waiting.discard(user_id)
        if user_id in self.members:
            self.flagged.add(user_id)
            self.key_packages.pop(user_id, None)
            others = [u for u in self.members if u != user_id and u in self.participants]
            if others:
                self._propose(others, remove=self.leaves.index(user_id))
            else:
                self._reset_group()
        self._ready_transitions()
        self._notifier.notify()

    # -- faults and version changes ------------------------------------------------------------------
    def send_bad_commit(self, user_id: int) -> int:
        """Announce a commit that cannot be processed to one participant; return its transition id."""
        transition_id = self._next_transition_id()
        self.participants[user_id].post_binary(ANNOUNCE_COMMIT, struct.pack(">H", transition_id) + b"\x00\x01bad")
        return transition_id

    def downgrade(self) -> int:
        """Announce a transition to protocol version 0 (transport encryption only, receivers in passthrough)."""
        transition_id = self._new_transition(0, set(self.participants))
        for participant in self.participants.values():
            participant.post_json(PREPARE_TRANSITION, {"protocol_version": 0, "transition_id": transition_id})
        return transition_id

    def upgrade(self) -> None:
        """Back to DAVE: a new group is created (op 24 with epoch 1; clients send new key packages)."""
        self.protocol_version = PROTOCOL_VERSION
        self._reset_group()
        for participant in self.participants.values():
            participant.post_json(PREPARE_EPOCH, {"protocol_version": PROTOCOL_VERSION, "epoch": 1})
            participant.post_binary(EXTERNAL_SENDER, self.external_sender.package)

    # -- media ----------------------------------------------------------------------------------------
    def hear(self, sender_id: int, frame: bytes) -> tuple[str, bytes, bool]:
        """Deliver a sender's frame to every far-end member; return what the first of them heard (outcome and
        the frame it got) and whether the frame was sent after a transition to an encrypted group."""
        results = [member.hear(sender_id, frame) for member in self.far_end]
        secured = self.secured and sender_id in self.members
        if results:
            return (*results[0], secured)
        return (UNDECRYPTABLE if frame.endswith(MARKER) else PLAIN), frame, secured

    def close(self) -> None:
        """Stop the far-end members' tasks and the transition timers."""
        for transition in self._transitions.values():
            if transition.timer is not None:
                transition.timer.cancel()
        for member in self.far_end:
            member.close()


@dataclass
class Hearing:
    """What a far-end member made of one sender's frames, in arrival order."""

    outcomes: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        """How many frames had ``outcome``."""
        return self.outcomes.count(outcome)

    @property
    def since_first_e2e(self) -> list[str]:
        """The outcomes from the first frame decrypted with the group's key on."""
        return self.outcomes[self.outcomes.index(E2E) :] if E2E in self.outcomes else []


@dataclass(eq=False)
class FarEndMember:
    """A member in the voice channel at the far end of the call: a real MLS participant with its own
    `davey.DaveSession`, joining by welcome or commit like the bot, and decrypting what the bot sends."""

    user_id: int
    call: DaveCall
    session: davey.DaveSession | None = None
    protocol_version: int = 0
    heard: dict[int, Hearing] = field(default_factory=dict)  # by sender user id
    errors: list[str] = field(default_factory=list)  # commits/welcomes this member could not process
    _pending: dict[int, int] = field(default_factory=dict)  # transition id -> protocol version
    _queue: asyncio.Queue[tuple[int, Json | bytes]] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Join the call: a session and its key package when the call is on DAVE, then process frames."""
        self.protocol_version = self.call.protocol_version
        self.call.join(self)
        if self.protocol_version:
            self._new_session()
        self._task = asyncio.create_task(self._run(), name=f"far-end member {self.user_id}")

    def close(self) -> None:
        """Stop processing frames."""
        if self._task is not None:
            self._task.cancel()

    def _new_session(self) -> None:
        if self.session is None:
            self.session = davey.DaveSession(self.protocol_version, self.user_id, self.call.channel_id)
        else:
            self.session.reinit(self.protocol_version, self.user_id, self.call.channel_id)
        self.call.key_package(self.user_id, self.session.get_serialized_key_package())

    def post_json(self, op: int, data: Json) -> None:
        """A JSON frame from the gateway."""
        self._queue.put_nowait((op, data))

    def post_binary(self, op: int, payload: bytes) -> None:
        """A binary frame from the gateway."""
        self._queue.put_nowait((op, payload))

    async def _run(self) -> None:
        while True:
            op, data = await self._queue.get()
            try:
                self._handle(op, data)
            except Exception as error:  # kept for the test to see, instead of a member that silently stops
                self.errors.append(f"op {op}: {error!r}")

    def _handle(self, op: int, data: Json | bytes) -> None:
        """Process a frame as a DAVE client does (discord.py 2.7.1's voice websocket is the model)."""
        if op == PREPARE_EPOCH and isinstance(data, dict) and data["epoch"] == 1:
            self.protocol_version = data["protocol_version"]
            self._new_session()
        if self.session is None:
            return
        if isinstance(data, dict):
            if op == PREPARE_TRANSITION:
                self._pending[data["transition_id"]] = data["protocol_version"]
                if data["transition_id"] == 0:
                    self._execute(0)
                else:
                    if data["protocol_version"] == 0:
                        self.session.set_passthrough_mode(True, 120)
                    self.call.ready(self.user_id, data["transition_id"])
            elif op == EXECUTE_TRANSITION:
                self._execute(data["transition_id"])
            return
        if op == EXTERNAL_SENDER:
            self.session.set_external_sender(data)
        elif op == PROPOSALS:
            operation = davey.ProposalsOperationType.append if data[0] == 0 else davey.ProposalsOperationType.revoke
            try:
                result = self.session.process_proposals(operation, data[1:])
            except ValueError as error:
                self.errors.append(str(error))
                return
            if result is not None:
                self.call.commit_welcome(self.user_id, result.commit + (result.welcome or b""))
        elif op in (ANNOUNCE_COMMIT, WELCOME):
            (transition_id,) = struct.unpack_from(">H", data)
            try:
                if op == ANNOUNCE_COMMIT:
                    self.session.process_commit(data[2:])
                else:
                    self.session.process_welcome(data[2:])
            except ValueError as error:
                self.errors.append(str(error))
                self.call.invalid_commit_welcome(self.user_id, transition_id)
                self._new_session()
                return
            if transition_id:
                self._pending[transition_id] = self.protocol_version
                self.call.ready(self.user_id, transition_id)

    def _execute(self, transition_id: int) -> None:
        if transition_id in self._pending:
            self.protocol_version = self._pending.pop(transition_id)

    def hear(self, sender_id: int, frame: bytes) -> tuple[str, bytes]:
        """Decrypt a frame from ``sender_id`` as a Discord client's receive transform does, and count the outcome:
        the Opus it got (the frame itself when it could not decrypt it)."""
        outcome, opus = self._decrypt(sender_id, frame)
        if frame != OPUS_SILENCE:  # silence frames travel unencrypted in every mode
            self.heard.setdefault(sender_id, Hearing()).outcomes.append(outcome)
        return outcome, opus

    def _decrypt(self, sender_id: int, frame: bytes) -> tuple[str, bytes]:
        if self.session is None:
            return (UNDECRYPTABLE if frame.endswith(MARKER) else PLAIN), frame
        with contextlib.suppress(ValueError):
            opus = self.session.decrypt(sender_id, davey.MediaType.audio, frame)
            return (E2E if frame.endswith(MARKER) else PASSTHROUGH), opus
        return UNDECRYPTABLE, frame
