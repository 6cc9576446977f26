"""A structure-aware mutator for protobuf requests (libFuzzer's custom mutator): most mutations parse
the input as the request message, change one field (a number to a boundary value, a string to a word
the server knows or an edited one, bytes by libFuzzer's own mutations or to a seed image, a repeated
field or map grown, shrunk or reordered, a oneof switched) and serialize it again, so mutations keep
reaching the servicers' translation instead of failing to parse. The rest are libFuzzer's byte-level
mutations of the whole message, which test the parse itself and reach what no field edit does."""

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import DecodeError, Message

BYTE_LEVEL = 0.2  # share of libFuzzer's own mutations of the serialized bytes
RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_ENUM: (-(2**31), 2**31 - 1),  # proto3 enums are open: unknown values arrive as numbers
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
INTERESTING_INTS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 24, 32, 64, 65, 100, 255, 256, 768, 1152, 4096, 65535]
INTERESTING_INTS += [2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**62, 2**63 - 1, 2**64 - 1]
INTERESTING_INTS += [-n for n in INTERESTING_INTS[1:]]
INTERESTING_FLOATS = [0.0, -0.0, 1e-45, 0.05, 0.3, 0.5, 0.999, 1.0, 1.0000001, 2.0, -1.0, 1e38, 3.4e38]
INTERESTING_FLOATS += [math.inf, -math.inf, math.nan]
ODD_CHARACTERS = "0123456789²１٣ -+._/:\x00é\u202e😀"


class ProtoMutator:
    """``message_types``: what an input is parsed as (one picked at random per mutation: messages that
    share field numbers, like ClassifyRequest and DetectRequest); ``words``: strings the server
    compares against (names, datatypes, versions…); ``blobs``: bytes worth planting (images)."""

    def __init__(
        self,
        message_types: Sequence[type[Message]],
        words: Sequence[str],
        blobs: Sequence[bytes] = (),
        byte_mutate: Callable[[bytes, int], bytes] | None = None,
    ) -> None:
        self.message_types = list(message_types)
        self.words = sorted(set(words))
        self.blobs = list(blobs)
        self._byte_mutate = byte_mutate

    def __call__(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        if rng.random() < BYTE_LEVEL:
            return self.byte_mutate(data, max_size)
        message_type = rng.choice(self.message_types)
        try:
            message = message_type.FromString(data)
        except DecodeError:
            message = message_type()
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            self._mutate(message, rng, max_size, depth=0)
        out = message.SerializeToString()
        return out if len(out) <= max_size else self.byte_mutate(data, max_size)

    def byte_mutate(self, data: bytes, max_size: int) -> bytes:
        if self._byte_mutate is not None:
            return self._byte_mutate(data, max_size)
        import atheris  # only while fuzzing: atheris.Mutate is libFuzzer's mutation engine

        return atheris.Mutate(data, max_size)

    def _mutate(self, message: Message, rng: random.Random, max_size: int, depth: int) -> None:
        fields = message.DESCRIPTOR.fields
        if not fields:
            return
        present = [f for f, _ in message.ListFields()]
        field = rng.choice(present if present and rng.random() < 0.75 else fields)  # mostly what is set
        name = field.name
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            self._mutate_map(getattr(message, name), field, rng, max_size, depth)
        elif field.is_repeated:
            self._mutate_repeated(getattr(message, name), field, rng, max_size, depth)
        elif field.type == F.TYPE_MESSAGE:
            if message.HasField(name) and rng.random() < 0.15:
                message.ClearField(name)
            elif depth < 6:
                self._mutate(getattr(message, name), rng, max_size, depth + 1)
                getattr(message, name).SetInParent()  # present even if left empty
        elif field.has_presence and message.HasField(name) and rng.random() < 0.15:
            message.ClearField(name)  # optional and oneof fields: absent is a value too
        else:
            setattr(message, name, self._value(field, getattr(message, name), rng, max_size))

    def _mutate_repeated(
        self, values: Any, field: FieldDescriptor, rng: random.Random, max_size: int, depth: int
    ) -> None:
        n = len(values)
        action = rng.randrange(8) if n else 0
        if field.type == F.TYPE_MESSAGE:
            if action in (0, 1):  # add one: new, or a copy of one there
                added = values.add()
                if n and action == 1:
                    added.CopyFrom(values[rng.randrange(n)])
                elif depth < 6:
                    self._mutate(added, rng, max_size, depth + 1)
            elif action == 2:
                del values[rng.randrange(n)]
            elif action == 3:
                kept = [type(v).FromString(v.SerializeToString()) for v in values]
                rng.shuffle(kept)
                del values[:]
                values.extend(kept)
            elif depth < 6:
                self._mutate(values[rng.randrange(n)], rng, max_size, depth + 1)
            return
        if action == 0:
            values.append(self._value(field, None, rng, max_size))
        elif action == 1:
            values.extend([values[rng.randrange(n)]] * rng.choice((1, 2, 7, 63, 70)))
        elif action == 2:
            del values[rng.randrange(n)]
        elif action == 3:
            del values[rng.randrange(n) :]
        elif action == 4:
            values.insert(rng.randrange(n + 1), self._value(field, None, rng, max_size))
        else:
            i = rng.randrange(n)
            values[i] = self._value(field, values[i], rng, max_size)

    def _mutate_map(
        self, entries: Any, field: FieldDescriptor, rng: random.Random, max_size: int, depth: int
    ) -> None:
        key_field = field.message_type.fields_by_name["key"]
        value_field = field.message_type.fields_by_name["value"]
        keys = list(entries.keys())
        if keys and rng.random() < 0.2:
            del entries[rng.choice(keys)]
            return
        key = rng.choice(keys) if keys and rng.random() < 0.5 else self._value(key_field, None, rng, max_size)
        if value_field.type == F.TYPE_MESSAGE:
            if depth < 6:
                self._mutate(entries[key], rng, max_size, depth + 1)
        else:
            entries[key] = self._value(value_field, entries.get(key), rng, max_size)

    def _value(self, field: FieldDescriptor, old: Any, rng: random.Random, max_size: int) -> Any:
        t = field.type
        if t == F.TYPE_BOOL:
            return rng.random() < 0.5
        if t in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
            if old is not None and rng.random() < 0.3:
                return old * rng.choice((0.5, 2.0, -1.0)) + rng.choice((0.0, 1e-3))
            return rng.choice(INTERESTING_FLOATS) if rng.random() < 0.8 else rng.uniform(-2, 2)
        if t in RANGES:
            low, high = RANGES[t]
            if t == F.TYPE_ENUM and rng.random() < 0.7:
                return rng.choice(field.enum_type.values).number
            if old is not None and rng.random() < 0.3:
                value = old + rng.choice((-1, 1, -2, 2, 8))
            elif rng.random() < 0.8:
                value = rng.choice(INTERESTING_INTS)
            else:
                value = rng.randint(-(2**20), 2**20)
            return min(max(value, low), high)
        if t == F.TYPE_STRING:
            return self._string(old, rng)
        if t == F.TYPE_BYTES:
            r = rng.random()
            if self.blobs and r < 0.3:
                return rng.choice(self.blobs)
            if r < 0.4:
                return b""
            return self.byte_mutate(old or b"", max(1, min(max_size, len(old or b"") * 2 + 16)))
        raise TypeError(f"field {field.full_name} of type {t}")

    def _string(self, old: str | None, rng: random.Random) -> str:
        r = rng.random()
        if r < 0.6 or not old:
            word = rng.choice(self.words)
            return word if rng.random() < 0.9 else word * rng.choice((2, 40))
        chars = list(old)
        i = rng.randrange(len(chars) + 1)
        if r < 0.75:
            chars.insert(i, rng.choice(ODD_CHARACTERS))
        elif r < 0.9 and chars:
            del chars[min(i, len(chars) - 1)]
        else:
            chars[i:] = []
        return "".join(chars)
