"""The few MLS structures (RFC 9420, cipher suite 2: P-256, AES-128-GCM, SHA-256) a DAVE voice gateway builds and
reads: its external sender, external Add/Remove proposals as signed PublicMessages, proposal references, and the
commit a member sends, split from its welcome. Encoded in the TLS presentation language with `cryptography` only."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

MLS_10 = 1  # ProtocolVersion mls10
PUBLIC_MESSAGE = 1  # WireFormat
SENDER_MEMBER, SENDER_EXTERNAL = 1, 2
CONTENT_PROPOSAL, CONTENT_COMMIT = 2, 3
PROPOSAL_ADD, PROPOSAL_REMOVE = 1, 3
BASIC_CREDENTIAL = 1
BY_REFERENCE = 2  # ProposalOrRefType reference
GATEWAY_IDENTITY = b"\x00\x01\x01\x00"  # what libdave's test external sender uses


def varint(value: int) -> bytes:
    """A variable-size vector length header (RFC 9420 §2.1.2)."""
    if value < 1 << 6:
        return bytes([value])
    if value < 1 << 14:
        return struct.pack(">H", 0x4000 | value)
    if value < 1 << 30:
        return struct.pack(">I", 0x80000000 | value)
    raise ValueError(f"vector too long: {value}")


def vector(data: bytes) -> bytes:
    """``opaque data<V>``."""
    return varint(len(data)) + data


class Reader:
    """Reads TLS-encoded fields from the start of a buffer; ``ValueError`` when it runs out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        """The next ``size`` bytes."""
        if self.pos + size > len(self.data):
            raise ValueError("truncated MLS message")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def uint(self, size: int) -> int:
        """An unsigned big-endian integer of ``size`` bytes."""
        return int.from_bytes(self.take(size), "big")

    def vector(self) -> bytes:
        """``opaque data<V>``."""
        first = self.uint(1)
        prefix = first >> 6
        if prefix == 3:
            raise ValueError("invalid vector length prefix")
        length = first & 0x3F
        for _ in range((1 << prefix) - 1):
            length = (length << 8) | self.uint(1)
        return self.take(length)

    @property
    def done(self) -> bool:
        """Whether every byte was read."""
        return self.pos == len(self.data)


def _sign_with_label(key: ec.EllipticCurvePrivateKey, label: bytes, content: bytes) -> bytes:
    """SignWithLabel (RFC 9420 §5.1.2): ECDSA P-256 with SHA-256, DER-encoded."""
    return key.sign(vector(b"MLS 1.0 " + label) + vector(content), ec.ECDSA(hashes.SHA256()))


def proposal_ref(message: bytes) -> bytes:
    """The ProposalRef of an external proposal PublicMessage: RefHash over its AuthenticatedContent (the message
    without its version; external senders carry no membership tag)."""
    return hashlib.sha256(vector(b"MLS 1.0 Proposal Reference") + vector(message[2:])).digest()


class ExternalSender:
    """The voice gateway's MLS external sender: a P-256 signature key and a basic credential."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.package = vector(public) + struct.pack(">H", BASIC_CREDENTIAL) + vector(GATEWAY_IDENTITY)
        """The serialized ``ExternalSender`` (op 25's payload)."""

    def _propose(self, group_id: int, epoch: int, proposal: bytes) -> bytes:
        content = (
            vector(struct.pack(">Q", group_id))
            + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0)
            + vector(b"")
            + bytes([CONTENT_PROPOSAL])
            + proposal
        )
        header = struct.pack(">HH", MLS_10, PUBLIC_MESSAGE)
        return header + content + vector(_sign_with_label(self._key, b"FramedContentTBS", header + content))

    def propose_add(self, group_id: int, epoch: int, key_package: bytes) -> bytes:
        """An external Add proposal (an MLSMessage) for a member's serialized KeyPackage."""
        return self._propose(group_id, epoch, struct.pack(">H", PROPOSAL_ADD) + key_package)

    def propose_remove(self, group_id: int, epoch: int, leaf_index: int) -> bytes:
        """An external Remove proposal (an MLSMessage) for the member at ``leaf_index``."""
        return self._propose(group_id, epoch, struct.pack(">HI", PROPOSAL_REMOVE, leaf_index))


def proposals_payload(messages: list[bytes]) -> bytes:
    """Op 27's payload appending ``messages``: operation type 0, then ``MLSMessage proposal_messages<V>``."""
    return b"\x00" + vector(b"".join(messages))


@dataclass(frozen=True)
class Commit:
    """A member's commit as the gateway sees it."""

    message: bytes
    group_id: int
    epoch: int
    sender_leaf: int
    proposal_refs: tuple[bytes, ...]


def _skip_leaf_node(reader: Reader) -> None:
    reader.vector()  # encryption_key
    reader.vector()  # signature_key
    reader.uint(2)  # credential type: basic identity or x509 certificates, both one vector
    reader.vector()
    for _ in range(5):  # capabilities: versions, cipher_suites, extensions, proposals, credentials
        reader.vector()
    source = reader.uint(1)
    if source == 1:  # key_package: lifetime
        reader.take(16)
    elif source == 3:  # commit: parent_hash
        reader.vector()
    reader.vector()  # extensions
    reader.vector()  # signature


def split_commit_welcome(data: bytes) -> tuple[Commit, bytes | None]:
    """Split op 28's payload into the commit (a PublicMessage from a member) and the welcome after it, if any.

    ``ValueError`` when it is not such a commit, or when it carries proposals by value (DAVE allows references to
    the gateway's proposals only)."""
    reader = Reader(data)
    if reader.uint(2) != MLS_10 or reader.uint(2) != PUBLIC_MESSAGE:
        raise ValueError("not an MLS 1.0 PublicMessage")
    group_id = int.from_bytes(reader.vector(), "big")
    epoch = reader.uint(8)
    if reader.uint(1) != SENDER_MEMBER:
        raise ValueError("a commit must come from a member")
    leaf = reader.uint(4)
    reader.vector()  # authenticated_data
    if reader.uint(1) != CONTENT_COMMIT:
        raise ValueError("not a commit")
    proposals = Reader(reader.vector())
    refs = []
    while not proposals.done:
        if proposals.uint(1) != BY_REFERENCE:
            raise ValueError("a DAVE commit references the gateway's proposals only")
        refs.append(proposals.vector())
    if reader.uint(1):  # optional<UpdatePath>
        _skip_leaf_node(reader)
        reader.vector()  # nodes
    reader.vector()  # signature
    reader.vector()  # confirmation_tag
    reader.vector()  # membership_tag
    commit = Commit(data[: reader.pos], group_id, epoch, leaf, tuple(refs))
    return commit, (data[reader.pos :] or None)
