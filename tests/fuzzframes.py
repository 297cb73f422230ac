"""Frames for fuzzing the live daemon: valid requests, random JSON, and their mutations.

Both the hypothesis strategies and the plain seeded loop in ``test_fuzz.py`` build
on these, so the two explore the same space: arbitrary bytes, arbitrary JSON
values, request-shaped objects, and valid request frames damaged at byte level
(flips, truncation, insertion) or at structure level (a field deleted, replaced
by random JSON, added). Strings never hold lone surrogates here; that class of
input has its own test (``test_unencodable_string_in_one_save_fails_alone``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from daemon_helpers import EDIT, outcome, session
from hypothesis import strategies as st

from sessionstore import protocol

FUZZ_SESSION = "fuzz-parent"
"""A session saved before fuzzing starts, so outcome frames built on it are valid."""

TRICKY_TEXT = [
    "", " ", "\x00", "\n", '"', "\\", "\\u0000", "../x", "/etc/passwd", "a/b", "é", "😀",
    "completed", "failed", "executing", "agent", "patch_system_prompt", "auto", "manual",
    "2026-03-01T12:00:00Z", "2026-13-45T99:99:99", "NaN", "Infinity", "null", "true", "1e999",
    "x" * 129, "status", "save_session", "save_outcome", FUZZ_SESSION,
]  # fmt: skip
TRICKY_NUMBERS: list[Any] = [
    0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 0.5, -0.0, 1e308, 5e-324,
    float("nan"), float("inf"), float("-inf"),
]  # fmt: skip


# -- valid requests, each with a fresh request id --------------------------------------------


def valid_frames(n: int) -> list[Callable[[str], bytes]]:
    """Builders of valid request frames (given a request id); ``n`` keeps ids apart."""
    return [
        lambda rid: protocol.encode_save_session(rid, session(f"fz-{n}", n)),
        lambda rid: protocol.encode_save_session(
            rid, session(f"fz-child-{n}", n, parent_session_id=FUZZ_SESSION)
        ),
        lambda rid: protocol.encode_save_outcome(
            rid, FUZZ_SESSION, outcome(f"fz-edit-{n}"), rationale="why", **EDIT
        ),
        lambda rid: protocol.encode_request(rid, "get_session", session_id=FUZZ_SESSION),
        lambda rid: protocol.encode_request(rid, "list_sessions", status="executing", limit=3),
        lambda rid: protocol.encode_request(rid, "list_outcomes", session_id=FUZZ_SESSION),
        lambda rid: protocol.encode_request(rid, "status"),
    ]


# -- the plain seeded generator -----------------------------------------------------------------


def random_text(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.4:
        return rng.choice(TRICKY_TEXT)
    alphabet = "abcxyz019-_./\\\"' \t\n\x00\x1féß€😀"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.choice(TRICKY_NUMBERS + [rng.randrange(-1000, 1000), rng.random()])
    if kind in (2, 3):
        return random_text(rng)
    if kind == 4:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {random_text(rng): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    found = []
    items = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    )
    for key, value in items:
        found.append((*prefix, key))
        found.extend(_paths(value, (*prefix, key)))
    return found


def mutate_structure(obj: Any, path: tuple[Any, ...], action: str, value: Any) -> Any:
    """Delete the value at ``path``, replace it with ``value``, or add ``value`` beside it."""
    *parents, last = path
    holder = obj
    for key in parents:
        holder = holder[key]
    if action == "delete":
        del holder[last]
    elif action == "replace":
        holder[last] = value
    elif isinstance(holder, dict):
        holder[f"{last}_extra"] = value
    else:
        holder.insert(last, value)
    return obj


def mutate_bytes(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    action = rng.randrange(4)
    if action == 0:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    elif action == 1:
        del data[rng.randrange(len(data)) :]
    elif action == 2:
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randrange(1, 8))
    else:
        start = rng.randrange(len(data))
        del data[start : start + rng.randrange(1, 20)]
    return bytes(data)


def random_frames(rng: random.Random, n: int) -> list[bytes]:
    """One fuzz message (a list of frames) from the plain generator."""
    pick = rng.random()
    if pick < 0.15:
        return [rng.randbytes(rng.randrange(200))]
    if pick < 0.3:
        return [dumps(random_json(rng))]
    if pick < 0.4:
        request = {"v": 1, "id": f"r{n}", "op": rng.choice(sorted(protocol.OPS))}
        for _ in range(rng.randrange(3)):
            request[random_text(rng)] = random_json(rng)
        return [dumps(request)]
    valid = rng.choice(valid_frames(n))(f"m{n}")
    if pick < 0.7:
        frame = mutate_bytes(rng, valid)
    else:
        obj = json.loads(valid)
        path = rng.choice(_paths(obj))
        action = rng.choice(["delete", "replace", "replace", "add"])
        frame = dumps(mutate_structure(obj, path, action, random_json(rng)))
    if rng.random() < 0.03:
        return [frame, rng.randbytes(rng.randrange(20))]  # a second frame: never valid
    return [frame]


# -- hypothesis strategies ----------------------------------------------------------------------

json_text = st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=20))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(TRICKY_NUMBERS)
    | json_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=12,
)
request_shaped = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(1), json_values),
        "id": st.one_of(st.text(min_size=1, max_size=10), json_values),
        "op": st.one_of(st.sampled_from(sorted(protocol.OPS)), json_text),
    },
    optional={
        key: json_values
        for key in (
            "session",
            "session_id",
            "outcome",
            "edit",
            "status",
            "limit",
            "mode",
            "dry_run",
            "full",
            "extra",
        )
    },
)


@st.composite
def mutated_valid_frames(draw: st.DrawFn) -> list[bytes]:
    n = draw(st.integers(0, 10**9))
    builder = draw(st.sampled_from(valid_frames(n)))
    valid = builder(f"h{n}")
    if draw(st.booleans()):  # byte level
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 3))):
            kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            if kind == "flip":
                data[at] ^= draw(st.integers(1, 255))
            elif kind == "truncate":
                del data[at:]
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            else:
                del data[at : at + draw(st.integers(1, 20))]
        frames = [bytes(data)]
    else:  # structure level
        obj = json.loads(valid)
        path = draw(st.sampled_from(_paths(obj)))
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        frames = [dumps(mutate_structure(obj, path, action, draw(json_values)))]
    if draw(st.integers(0, 30)) == 0:
        frames.append(draw(st.binary(max_size=20)))
    return frames
