from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PayloadType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_TYPE_UNSPECIFIED: _ClassVar[PayloadType]
    ADVERTISEMENT: _ClassVar[PayloadType]
    ROSTER: _ClassVar[PayloadType]
    SHARE_BUNDLE: _ClassVar[PayloadType]
    TRAIN_REQUEST: _ClassVar[PayloadType]
    MASKED_MANIFEST: _ClassVar[PayloadType]
    REVEAL_REQUEST: _ClassVar[PayloadType]
    REVEAL_REPLY: _ClassVar[PayloadType]

class ShareKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARE_KIND_UNSPECIFIED: _ClassVar[ShareKind]
    MASK_KEY: _ClassVar[ShareKind]
    SELF_MASK: _ClassVar[ShareKind]
PAYLOAD_TYPE_UNSPECIFIED: PayloadType
ADVERTISEMENT: PayloadType
ROSTER: PayloadType
SHARE_BUNDLE: PayloadType
TRAIN_REQUEST: PayloadType
MASKED_MANIFEST: PayloadType
REVEAL_REQUEST: PayloadType
REVEAL_REPLY: PayloadType
SHARE_KIND_UNSPECIFIED: ShareKind
MASK_KEY: ShareKind
SELF_MASK: ShareKind

class KeyAdvert(_message.Message):
    __slots__ = ("site_id", "epoch", "channel_public_key", "mask_public_key", "signature")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    epoch: int
    channel_public_key: bytes
    mask_public_key: bytes
    signature: bytes
    def __init__(self, site_id: _Optional[str] = ..., epoch: _Optional[int] = ..., channel_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("sender", "receiver", "kind", "tag", "nonce", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    receiver: str
    kind: ShareKind
    tag: int
    nonce: bytes
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., receiver: _Optional[str] = ..., kind: _Optional[_Union[ShareKind, str]] = ..., tag: _Optional[int] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class QuantParams(_message.Message):
    __slots__ = ("clip_range", "max_weight")
    CLIP_RANGE_FIELD_NUMBER: _ClassVar[int]
    MAX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    clip_range: float
    max_weight: float
    def __init__(self, clip_range: _Optional[float] = ..., max_weight: _Optional[float] = ...) -> None: ...

class Advertisement(_message.Message):
    __slots__ = ("version", "type", "run_id", "advert")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERT_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: PayloadType
    run_id: str
    advert: KeyAdvert
    def __init__(self, version: _Optional[int] = ..., type: _Optional[_Union[PayloadType, str]] = ..., run_id: _Optional[str] = ..., advert: _Optional[_Union[KeyAdvert, _Mapping]] = ...) -> None: ...

class Roster(_message.Message):
    __slots__ = ("version", "type", "run_id", "threshold", "quant", "adverts")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    QUANT_FIELD_NUMBER: _ClassVar[int]
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: PayloadType
    run_id: str
    threshold: int
    quant: QuantParams
    adverts: _containers.RepeatedCompositeFieldContainer[KeyAdvert]
    def __init__(self, version: _Optional[int] = ..., type: _Optional[_Union[PayloadType, str]] = ..., run_id: _Optional[str] = ..., threshold: _Optional[int] = ..., quant: _Optional[_Union[QuantParams, _Mapping]] = ..., adverts: _Optional[_Iterable[_Union[KeyAdvert, _Mapping]]] = ...) -> None: ...

class ShareBundle(_message.Message):
    __slots__ = ("version", "type", "run_id", "sender", "shares")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: PayloadType
    run_id: str
    sender: str
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, version: _Optional[int] = ..., type: _Optional[_Union[PayloadType, str]] = ..., run_id: _Optional[str] = ..., sender: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("version", "type", "run_id", "round", "participants")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: PayloadType
    run_id: str
    round: int
    participants: _containers.RepeatedCompositeFieldContainer[KeyAdvert]
    def __init__(self, version: _Optional[int] = ..., type: _Optional[_Union[PayloadType, str]] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., participants: _Optional[_Iterable[_Union[KeyAdvert, _Mapping]]] = ...) -> None: ...

class MaskedManifest(_message.Message):
    __slots__ = ("version", "type", "run_id", "round", "site_id", "num_values", "num_extra", "vector_sha256", "self_mask_commitment", "view_signature", "self_mask_shares", "next_key", "next_key_shares")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_VALUES_FIELD_NUMBER: _ClassVar[int]
    NUM_EXTRA_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SHA256_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    VIEW_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    NEXT_KEY_FIELD_NUMBER: _ClassVar[int]
    NEXT_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: PayloadType
    run_id: str
    round: int
    site_id: str
    num_values: int
    num_extra: int
    vector_sha256: bytes
    self_mask_commitment: bytes
    view_signature: bytes
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    next_key: KeyAdvert
    next_key_shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, version: _Optional[int] = ..., type: _Optional[_Union[PayloadType, str]] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., site_id: _Optional[str] = ..., num_values: _Optional[int] = ..., num_extra: _Optional[int] = ..., vector_sha256: _Optional[bytes] = ..., self_mask_commitment: _Optional[bytes] = ..., view_signature: _Optional[bytes] = ..., self_mask_shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ..., next_key: _Optional[_Union[KeyAdvert, _Mapping]] = ..., next_key_shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class ViewSignature(_message.Message):
    __slots__ = ("site_id", "signature")
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    site_id: str
    signature: bytes
    def __init__(self, site_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RevealRequest(_message.Message):
    __slots__ = ("version", "type", "run_id", "round", "survivors", "view_signatures", "shares")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    VIEW_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: PayloadType
    run_id: str
    round: int
    survivors: _containers.RepeatedScalarFieldContainer[str]
    view_signatures: _containers.RepeatedCompositeFieldContainer[ViewSignature]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, version: _Optional[int] = ..., type: _Optional[_Union[PayloadType, str]] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., survivors: _Optional[_Iterable[str]] = ..., view_signatures: _Optional[_Iterable[_Union[ViewSignature, _Mapping]]] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "kind", "tag", "index", "value")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TAG_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    kind: ShareKind
    tag: int
    index: int
    value: bytes
    def __init__(self, owner: _Optional[str] = ..., kind: _Optional[_Union[ShareKind, str]] = ..., tag: _Optional[int] = ..., index: _Optional[int] = ..., value: _Optional[bytes] = ...) -> None: ...

class RevealReply(_message.Message):
    __slots__ = ("version", "type", "run_id", "round", "site_id", "shares")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SITE_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    version: int
    type: PayloadType
    run_id: str
    round: int
    site_id: str
    shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, version: _Optional[int] = ..., type: _Optional[_Union[PayloadType, str]] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., site_id: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...
