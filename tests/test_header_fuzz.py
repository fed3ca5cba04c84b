"""Header fuzzing, on every stack the behaviour suite drives (``tests/behaviour``).

Two hypothesis properties, each case sent to every stack (Starlette, FastAPI, Flask, plain
WSGI, Django sync and async) through the real adapter and its test client; 2,000 cases per
stack in all (:data:`CASES_PER_STACK`). The engines are in-memory, built once, and share one
store holding the test key, so every stack sees the same token:

* ``test_fuzzed_headers``: GETs with random lists of headers drawn from the credential
  headers and their neighbours (authorization, x-api-key, x-api-secret, x-account-id,
  idempotency-key, accept, content-type, cookie, x-forwarded-for; any case, repeated, names
  with an underscore), whose values mix the test key's real token, id and secret with odd
  schemes, separators, latin-1 and other non-ASCII text, control characters, empty values
  and values of several KB.
* ``test_changed_token_refused``: the test key's credential changed (a character flipped in
  case, replaced, inserted or deleted at any position; truncated, prefixed, suffixed, the
  whole changed in case, another environment, or a character changed *with the checksum
  recomputed*, so that only the store or argon2 can refuse it) in each form:
  ``Authorization: Bearer``, ``x-api-key: <token>``, and ``x-api-key: <key id>`` +
  ``x-api-secret`` with a changed secret or key id; sent while the real credential is in the
  engine's cache, or with every cache expired.

Every response must: have a status below 500; show none of the credentials sent (nor the
key's real token or secret) in its body or any header; when not 2xx, carry a JSON body typed
``application/json`` (keystile's ``{"error": {code, type, message}}``) or
``application/problem+json`` (RFC 9457: ``type``, ``title``, ``status``, ``code``). A changed
credential must never get a 2xx, nor leave the real one refused afterwards;
``test_unchanged_credentials_accepted`` checks that the same requests with the real
credential get a 200, so that the refusals are the change's doing.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from keystile import Keystile
from keystile._core import tokens
from keystile.stores import KeyStore, open_store

# The behaviour suite's own table of stacks, so that a stack added there is fuzzed here too.
from .behaviour.conftest import HARNESSES
from .behaviour.harness import EXEMPT_PATHS, Harness, Result
from .conftest import FAST_ARGON2, Clock

#: Split evenly between the two properties: a request through an ASGI test client costs
#: milliseconds (thread hops), and the file should stay within a minute on two slow cores.
CASES_PER_STACK = 2000
FUZZ = settings(
    max_examples=CASES_PER_STACK // 2,
    deadline=None,
    database=None,
    # New cases on every local run; under CI the same ones each time, so that a landing is
    # judged on the code it brings, not on a draw (a case found locally becomes an @example).
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

ACCOUNT = "acct-fuzz"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
#: The routes every harness serves the same way (and the exempt ones). Unknown routes are
#: left out: past keystile, their 404 is the framework's own page, not keystile's answer.
PATHS = ["/whoami", "/read", "/write", "/health", "/public/x"]
#: The headers whose values are credentials, hence must never be echoed.
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "x-api-secret"})
#: Shorter strings turn up in any body by chance ("a", "key_", "Bearer").
MIN_ECHO_LENGTH = 8
#: Past every cache's lifetime (local_cache_ttl, negative_cache_ttl) and failure window.
EXPIRE_ALL = 3600.0


# ----------------------------------------------------------------------------- stacks


@dataclass(frozen=True)
class Key:
    token: str
    key_id: str
    secret: str
    #: Everything a 200 may rightly show about the key: a sent value found in it is no echo.
    public: str

    @property
    def kid(self) -> str:
        return self.key_id.removeprefix(tokens.KEY_ID_PREFIX)


@dataclass(frozen=True)
class Stack:
    name: str
    harness: Harness
    #: The engine's monotonic clock: the caches' lifetimes run on it, and only the tests move it.
    monotonic: Clock
    engine: Keystile


@dataclass(frozen=True)
class Stacks:
    key: Key
    by_name: dict[str, Stack]


class _Shared:
    """The one store as each engine sees it: an engine closes its store, this one outlives
    them all."""

    def __init__(self, store: KeyStore) -> None:
        self._store = store

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _open_stack(name: str, store: KeyStore, closing: contextlib.ExitStack) -> Stack:
    monotonic = Clock(1000.0)
    engine = Keystile(
        {
            "store": "memory://",
            "argon2": FAST_ARGON2,
            "exempt_paths": EXEMPT_PATHS,
            # Past the per-key failure budget a wrong secret gets a 429 without argon2; the
            # resealed changes below are there to reach argon2, every time.
            "login_max_failures_per_key": 10**9,
        },
        clock=Clock(),
        monotonic=monotonic,
        store=cast(KeyStore, _Shared(store)),
    )
    closing.callback(engine.close)
    harness = HARNESSES[name](engine)
    closing.callback(harness.close)  # (before engine.close: ASGI closes it in its own loop)
    return Stack(name, harness, monotonic, engine)


@pytest.fixture(scope="module")
def stacks() -> Iterator[Stacks]:
    """Every stack, built once. Each hypothesis case goes to all of them: drawing a case
    costs about as much as a request, and drawing it again for each stack would double the
    file's time."""
    with contextlib.ExitStack() as closing:
        store = open_store("memory://")
        closing.callback(store.close)
        by_name = {name: _open_stack(name, store, closing) for name in sorted(HARNESSES)}
        created = next(iter(by_name.values())).engine.keys.create(
            ACCOUNT, "fuzz key", permissions=["read"]
        )
        shown = [
            {"key_id": created.key_id, "account_id": ACCOUNT, "environment": "live"},
            ["read", "bearer", "api_key", "key_secret", "session"],
        ]
        key = Key(created.token, created.key_id, created.secret, json.dumps(shown))
        for stack in by_name.values():
            # The real credential starts out cached, as test_changed_token_refused expects.
            assert send(stack, key, "/whoami", bearer(key.token)).status == 200
        yield Stacks(key, by_name)


def on_every_stack(stacks: Stacks, check: Callable[[Stack], None]) -> None:
    """``check`` on each stack; a failure names every stack it happened on."""
    failed: dict[str, AssertionError] = {}
    for stack in stacks.by_name.values():
        try:
            check(stack)
        except AssertionError as exc:
            failed[stack.name] = exc
    if failed:
        raise AssertionError("\n".join(f"[{name}] {exc}" for name, exc in failed.items()))


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# -------------------------------------------------------------------------- assertions


def _strings(value: Any) -> Iterator[str]:
    """The strings of a parsed JSON body: an echo may hide behind JSON escapes."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _echo_candidates(key: Key, sent: Sequence[tuple[str, str]]) -> set[str]:
    """The credentials a response must not show: the key's real ones, and each credential
    value sent (its token, for an Authorization header) long enough to mean something."""
    found = {key.token, key.secret, key.secret[: tokens.RANDOM_LENGTH]}
    for name, value in sent:
        if name.lower() not in SECRET_HEADERS:
            continue
        candidates = [value.strip(" \t")]
        if name.lower() == "authorization":
            candidates.append(value.partition(" ")[2].strip(" \t"))
        for candidate in candidates:
            # A piece of VOCABULARY alone is no credential: a response may rightly carry
            # "application/json", and a 200 the key's id.
            if len(candidate) >= MIN_ECHO_LENGTH and candidate not in _BENIGN + key.public:
                found.add(candidate)
    return found


def _brief(sent: Sequence[tuple[str, str]]) -> str:
    """The request's headers for a failure message, with the KB-long values cut short."""
    return repr(
        [
            (name, value if len(value) < 200 else f"{value[:80]}…({len(value)})")
            for name, value in sent
        ]
    )


def check_response(key: Key, result: Result, sent: Sequence[tuple[str, str]]) -> None:
    """The properties every answer must have, whatever was sent."""
    assert result.status < 500, f"{result.status} for {_brief(sent)}: {result.text[:300]!r}"

    parsed = _parsed(result.text)
    shown = [result.text, *result.headers.values(), *_strings(parsed)]
    for secret in _echo_candidates(key, sent):
        for place in shown:
            assert secret not in place, (
                f"{secret[:80]!r} echoed in {place[:300]!r} for {_brief(sent)}"
            )

    if 200 <= result.status < 300:
        return
    media = result.headers.get("content-type", "").split(";")[0].strip().lower()
    where = f"{result.status} for {_brief(sent)}"
    assert media in (JSON, PROBLEM_JSON), f"{where} typed {media!r}: {result.text[:300]!r}"
    assert isinstance(parsed, dict), f"{where}: not a JSON object: {result.text[:300]!r}"
    if media == PROBLEM_JSON:
        assert {"type", "title", "status", "code"} <= parsed.keys(), f"{where}: {parsed}"
        # RFC 9457 3.1.2: "status", when there, is the response's own status code.
        assert parsed["status"] == result.status, f"{where}: {parsed}"
    else:
        error = parsed.get("error")
        assert isinstance(error, dict), f"{where}: {parsed}"
        assert {"code", "type", "message"} <= error.keys(), f"{where}: {parsed}"
        members = ("code", "type", "message")
        assert all(isinstance(error[k], str) and error[k] for k in members), f"{where}: {parsed}"


def send(stack: Stack, key: Key, path: str, sent: Sequence[tuple[str, str]]) -> Result:
    """GET ``path`` with these headers, checked. Values go as raw bytes, utf-8 as a client
    sends text beyond latin-1: httpx refuses a non-ASCII ``str`` value, never bytes."""
    raw = [(name, value.encode("utf-8")) for name, value in sent]
    result = stack.harness.request("GET", path, raw)
    check_response(key, result, sent)
    return result


# ----------------------------------------------------------------------- fuzzed headers


class Real(enum.Enum):
    """A piece of the test key's real credential, filled in once the key exists."""

    TOKEN = "token"
    KEY_ID = "key_id"
    SECRET = "secret"
    KID = "kid"


HEADER_NAMES = [
    "authorization",
    "x-api-key",
    "x-api-secret",
    "x-account-id",
    "idempotency-key",
    "accept",
    "content-type",
    "cookie",
    "x-forwarded-for",
]
#: Strings keystile's parsers look for, so that random values reach their deeper branches.
VOCABULARY = [
    "Bearer ",
    "bearer ",
    "BEARER ",
    "Bearer  ",
    "Bearer\t",
    "Basic ",
    "Basic dXNlcjpwYXNz",
    "Token ",
    "sk_",
    "sk_live_",
    "sk_test_",
    "sk_sess_",
    "key_",
    "_",
    ",",
    ", ",
    ";",
    "=",
    " ",
    "\t",
    "application/problem+json",
    "application/json",
    "application/json, application/problem+json",
    "application/problem+json;q=0.5, application/json;q=0.9",
    "*/*;q=0.1, application/problem+json",
    "*/*",
    "text/html",
    ";q=",
    "0",
    "1",
    "0.5",
    "nan",
    "inf",
    "-1",
    "1e400",
    "sessionid=",
    "127.0.0.1",
    "::1",
    ACCOUNT,
    "acct-other",
]
_BENIGN = "\n".join(VOCABULARY)

# No CR, LF or NUL: no HTTP server delivers them in a header value (RFC 9110 5.5), yet the
# harnesses would pass them straight through. Other control characters do reach apps.
_CHARS = st.characters(min_codepoint=1, max_codepoint=0x2FF, exclude_characters="\r\n")


def _repeated(piece: str, length: int) -> str:
    return (piece * length)[:length]


_PIECES = st.one_of(
    st.sampled_from(list(Real)),
    st.sampled_from(VOCABULARY),
    st.text(_CHARS, max_size=12),
    st.text(tokens.ALPHABET + "_-.,;= ", max_size=60),
    st.builds(_repeated, st.text(_CHARS, min_size=1, max_size=4), st.integers(256, 4096)),
)
Value = tuple[Real | str, ...]
_VALUES = st.lists(_PIECES, max_size=4).map(tuple)


def _cased(name: str, case: str) -> str:
    return {"lower": name, "upper": name.upper(), "title": name.title()}[case]


_NAMES = st.one_of(
    st.builds(_cased, st.sampled_from(HEADER_NAMES), st.sampled_from(["lower", "upper", "title"])),
    # WSGI servers drop these; Django's ASGI handler maps them onto the dashed name.
    st.sampled_from(["x_api_key", "x_api_secret", "x-other"]),
)
#: A whole credential (or none) among the random headers: without one, a request rarely gets
#: past the credential checks to the permission, account and problem+json branches.
BASES: list[list[tuple[str, Value]]] = [
    [],
    [("authorization", ("Bearer ", Real.TOKEN))],
    [("x-api-key", (Real.TOKEN,))],
    [("x-api-key", (Real.KEY_ID,)), ("x-api-secret", (Real.SECRET,))],
]


def _combined(
    base: list[tuple[str, Value]], extra: list[tuple[str, Value]], base_first: bool
) -> list[tuple[str, Value]]:
    return [*base, *extra] if base_first else [*extra, *base]


HEADER_LISTS = st.builds(
    _combined,
    st.sampled_from(BASES),
    st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
    st.booleans(),
)


def resolve(key: Key, value: Value) -> str:
    real = {
        Real.TOKEN: key.token,
        Real.KEY_ID: key.key_id,
        Real.SECRET: key.secret,
        Real.KID: key.kid,
    }
    return "".join(real[piece] if isinstance(piece, Real) else piece for piece in value)


@FUZZ
@given(path=st.sampled_from(PATHS), headers=HEADER_LISTS)
def test_fuzzed_headers(stacks: Stacks, path: str, headers: list[tuple[str, Value]]) -> None:
    sent = [(name, resolve(stacks.key, value)) for name, value in headers]

    def check(stack: Stack) -> None:
        send(stack, stacks.key, path, sent)

    on_every_stack(stacks, check)


# ---------------------------------------------------------------------- changed tokens


class Form(enum.Enum):
    BEARER = "bearer"
    API_KEY = "api_key"
    #: x-api-key: <key id> + x-api-secret: <secret>, the secret changed
    PAIR_SECRET = "pair_secret"
    #: the same, the key id changed
    PAIR_KEY_ID = "pair_key_id"


@dataclass(frozen=True)
class Change:
    """One edit of a string: ``at`` is taken modulo its length, ``text`` is what goes in."""

    kind: str
    at: int = 0
    text: str = ""

    def apply(self, value: str) -> str:
        i = self.at % (len(value) + 1)
        j = self.at % len(value) if value else 0
        edits = {
            "case": lambda: value[:j] + value[j : j + 1].swapcase() + value[j + 1 :],
            "replace": lambda: value[:j] + self.text + value[j + 1 :],
            "insert": lambda: value[:i] + self.text + value[i:],
            "delete": lambda: value[:j] + value[j + 1 :],
            "truncate": lambda: value[:i],
            "append": lambda: value + self.text,
            "prepend": lambda: self.text + value,
            "swapcase": value.swapcase,
            "upper": value.upper,
            "lower": value.lower,
        }
        return edits[self.kind]()


#: What goes into a token: its own alphabet, its separator, and what a header may add.
_EDIT_CHARS = tokens.ALPHABET + "_-.,;=+/ \t\x01\x7féß€"
_EDITS = st.one_of(
    st.builds(
        Change,
        st.sampled_from(["case", "replace", "insert", "delete", "truncate"]),
        st.integers(0, 200),
        st.text(_EDIT_CHARS, max_size=3),
    ),
    st.builds(Change, st.sampled_from(["append", "prepend"]), st.just(0), st.text(_EDIT_CHARS)),
    st.builds(Change, st.sampled_from(["swapcase", "upper", "lower"])),
)


@dataclass(frozen=True)
class Reseal:
    """A character of the key id or of the secret's random part changed, and the checksum
    made right again: such a credential passes the format check, and only the store or
    argon2 can refuse it."""

    at: int
    char: str


@dataclass(frozen=True)
class Environment:
    """The token's environment replaced (the checksum does not cover it)."""

    name: str


Mutation = tuple[Change, ...] | Reseal | Environment
MUTATIONS = st.one_of(
    st.lists(_EDITS, min_size=1, max_size=3).map(tuple),
    st.builds(Reseal, st.integers(0, 200), st.sampled_from(tokens.ALPHABET)),
    st.builds(Environment, st.sampled_from(["test", "sess", "Live", "LIVE", "prod", ""])),
)
#: Headers a real client adds, which must change nothing about the verdict.
EXTRAS: list[tuple[str, str]] = [
    ("accept", PROBLEM_JSON),
    ("accept", JSON),
    ("x-account-id", ACCOUNT),
    ("idempotency-key", "fuzz-0001"),
]


def _resealed(kid: str, random_part: str, at: int, char: str, lo: int, hi: int) -> tuple[str, str]:
    """(kid, secret) with the character at ``lo + at % (hi - lo)`` of kid + random part set
    to ``char``, and a valid checksum."""
    joined = kid + random_part
    pos = lo + at % (hi - lo)
    joined = joined[:pos] + char + joined[pos + 1 :]
    new_kid, new_random = joined[: tokens.KID_LENGTH], joined[tokens.KID_LENGTH :]
    # No public API makes a checksum for chosen text (rightly): borrow the private one.
    return new_kid, new_random + tokens._checksum(new_kid, new_random)


def credential_headers(key: Key, form: Form, mutation: Mutation | None) -> list[tuple[str, str]]:
    """The form's headers for the real credential, or for the credential so changed."""
    prefix, environment, kid, secret = key.token.split("_")
    key_id, token = key.key_id, key.token
    if isinstance(mutation, Reseal):
        kid_end = tokens.KID_LENGTH
        spans = {Form.PAIR_SECRET: (kid_end, kid_end + tokens.RANDOM_LENGTH)}
        spans[Form.PAIR_KEY_ID] = (0, kid_end)
        lo, hi = spans.get(form, (0, kid_end + tokens.RANDOM_LENGTH))
        random_part = secret[: tokens.RANDOM_LENGTH]
        kid, secret = _resealed(kid, random_part, mutation.at, mutation.char, lo, hi)
        token = tokens.format_token(prefix, environment, kid, secret)
        key_id = tokens.KEY_ID_PREFIX + kid
    elif isinstance(mutation, Environment):
        token = tokens.format_token(prefix, mutation.name, kid, secret)
    elif mutation is not None:
        for change in mutation:
            if form is Form.PAIR_SECRET:
                secret = change.apply(secret)
            elif form is Form.PAIR_KEY_ID:
                key_id = change.apply(key_id)
            else:
                token = change.apply(token)

    if form is Form.BEARER:
        return bearer(token)
    if form is Form.API_KEY:
        return [("x-api-key", token)]
    return [("x-api-key", key_id), ("x-api-secret", secret)]


def _as_read(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers as keystile reads them: every server and adapter trims a value's outer
    blanks, and a Bearer token begins after the first space (more spaces are trimmed)."""
    read = []
    for name, value in headers:
        value = value.strip(" \t")
        if name == "authorization":
            scheme, _, value = value.partition(" ")
            value = f"{scheme} {value.strip(' ')}"
        read.append((name, value))
    return read


# A live key's own id and secret in a session token ("sess"), bugs found here:
# - with the key's credential in the engine's cache: 200, auth_method "session";
# - without: a 401, which puts the shared id + secret digest in the negative cache, so the
#   real token and the key + secret pair get 401s too, for negative_cache_ttl.
@example(form=Form.BEARER, mutation=Environment("sess"), extras=[], cold=False)
@example(form=Form.API_KEY, mutation=Environment("sess"), extras=[], cold=True)
@FUZZ
@given(
    form=st.sampled_from(list(Form)),
    mutation=MUTATIONS,
    extras=st.lists(st.sampled_from(EXTRAS), max_size=2, unique=True),
    # Mostly warm: the real credential is cached, as it is between a client's requests (and a
    # cold case costs a second request, to see that the real credential still works).
    cold=st.sampled_from([False, False, False, False, True]),
)
def test_changed_token_refused(
    stacks: Stacks, form: Form, mutation: Mutation, extras: list[tuple[str, str]], cold: bool
) -> None:
    key = stacks.key
    real = credential_headers(key, form, None)
    changed = credential_headers(key, form, mutation)
    # Not every edit changes anything (the case of a digit, "live" for "live").
    assume(_as_read(changed) != _as_read(real))

    def check(stack: Stack) -> None:
        if cold:
            stack.monotonic.advance(EXPIRE_ALL)
        result = send(stack, key, "/whoami", [*changed, *extras])
        assert not 200 <= result.status < 300, f"changed credential accepted: {changed!r}: {result}"
        if cold:
            # Also caches the real credential again for the warm cases that follow.
            after = send(stack, key, "/whoami", [*real, *extras])
            assert after.status == 200, f"the real credential refused after {changed!r}: {after}"

    on_every_stack(stacks, check)


@pytest.mark.parametrize("name", sorted(HARNESSES))
@pytest.mark.parametrize("form", list(Form), ids=[form.value for form in Form])
@pytest.mark.parametrize("extras", [[], EXTRAS[:1], EXTRAS[1:]], ids=["bare", "problem", "rest"])
def test_unchanged_credentials_accepted(
    stacks: Stacks, name: str, form: Form, extras: list[tuple[str, str]]
) -> None:
    """The requests the property above changes, unchanged: a refusal there is the change's.
    Once with every cache expired (the store and argon2), once more from the cache."""
    stack, key = stacks.by_name[name], stacks.key
    stack.monotonic.advance(EXPIRE_ALL)
    for _ in ("cold", "warm"):
        result = send(stack, key, "/whoami", [*credential_headers(key, form, None), *extras])
        assert result.status == 200, result
        assert result.json["key_id"] == key.key_id, result.json
