"""Versioned wire format of the secure-aggregation payloads.

The messages are defined in protos/secagg.proto; protos/secagg_pb2.py is
generated from it by protoc (see the .proto header), so any protobuf reader can
parse what fedvox sends. Python code here and on both sides (fl_client.secagg,
fl_server.secagg) handles payloads as plain dicts (field name ->
int/str/bytes/float, nested dicts, lists); this module converts them to and
from bytes and refuses a payload of another version or stage type with
WireFormatError.
"""
from __future__ import annotations

from typing import Any, Mapping

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from protos import secagg_pb2 as pb

from fl_common.secagg.errors import WireFormatError

VERSION = 1

# stage payload type -> (enum value, message class)
ADVERTISEMENT = "ADVERTISEMENT"
ROSTER = "ROSTER"
SHARE_BUNDLE = "SHARE_BUNDLE"
TRAIN_REQUEST = "TRAIN_REQUEST"
MASKED_MANIFEST = "MASKED_MANIFEST"
REVEAL_REQUEST = "REVEAL_REQUEST"
REVEAL_REPLY = "REVEAL_REPLY"

_MESSAGES: dict[str, type[Message]] = {
    ADVERTISEMENT: pb.Advertisement,
    ROSTER: pb.Roster,
    SHARE_BUNDLE: pb.ShareBundle,
    TRAIN_REQUEST: pb.TrainRequest,
    MASKED_MANIFEST: pb.MaskedManifest,
    REVEAL_REQUEST: pb.RevealRequest,
    REVEAL_REPLY: pb.RevealReply,
}

MASK_KEY = pb.MASK_KEY    # ShareKind values (ints in the dicts)
SELF_MASK = pb.SELF_MASK


def _fill(msg: Message, data: Mapping[str, Any]) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    for name, value in data.items():
        fd = fields.get(name)
        if fd is None:
            raise WireFormatError(f"{msg.DESCRIPTOR.name} has no field {name!r}")
        if value is None:
            continue
        is_msg = fd.type == FieldDescriptor.TYPE_MESSAGE
        if _is_repeated(fd):
            target = getattr(msg, name)
            for item in value:
                if is_msg:
                    _fill(target.add(), item)
                else:
                    target.append(item)
        elif is_msg:
            _fill(getattr(msg, name), value)
        else:
            setattr(msg, name, value)


def _is_repeated(fd: FieldDescriptor) -> bool:
    # protobuf >= 5 exposes is_repeated; label is the older spelling
    rep = getattr(fd, "is_repeated", None)
    return rep if isinstance(rep, bool) else fd.label == FieldDescriptor.LABEL_REPEATED


def _to_dict(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        is_msg = fd.type == FieldDescriptor.TYPE_MESSAGE
        if _is_repeated(fd):
            out[fd.name] = [_to_dict(v) if is_msg else v for v in value]
        elif is_msg:
            out[fd.name] = _to_dict(value) if msg.HasField(fd.name) else None
        else:
            out[fd.name] = value
    return out


def encode(kind: str, data: Mapping[str, Any]) -> bytes:
    """Serialise a payload dict of stage `kind` (version and type are set here)."""
    msg = _MESSAGES[kind]()
    _fill(msg, {k: v for k, v in data.items() if k not in ("version", "type")})
    msg.version = VERSION
    msg.type = pb.PayloadType.Value(kind)
    return msg.SerializeToString()


def decode(kind: str, payload: bytes, sender: str = "peer") -> dict[str, Any]:
    """Parse a payload that must be of stage `kind`; `sender` names where it
    came from in errors."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireFormatError(f"{kind.lower()} from {sender}: expected bytes, "
                              f"got {type(payload).__name__}")
    msg = _MESSAGES[kind]()
    try:
        msg.ParseFromString(bytes(payload))
    except DecodeError as e:
        raise WireFormatError(f"{kind.lower()} from {sender}: not a valid payload ({e})") from None
    if msg.version != VERSION:
        raise WireFormatError(f"{kind.lower()} from {sender}: wire version {msg.version}, "
                              f"this fedvox speaks version {VERSION}")
    if msg.type != pb.PayloadType.Value(kind):
        got = pb.PayloadType.Name(msg.type) if msg.type in pb.PayloadType.values() else msg.type
        raise WireFormatError(f"{kind.lower()} from {sender}: payload is a {got}, "
                              f"expected {kind}")
    return _to_dict(msg)
