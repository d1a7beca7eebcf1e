#!/usr/bin/env python3
"""
mock_llm.py - a programmable mock LLM HTTP server for the llm_canary tests,
demo and benchmarks.

It speaks the OpenAI chat-completions / embeddings wire format and the
Anthropic messages wire format, behaves (per model id) according to a JSON
"profile", and never talks to the network beyond 127.0.0.1.

Python 3.11 standard library only.

Usage
-----
    python3 test/mock_llm.py --port 0 --port-file /tmp/port.txt --seed 42 \
        [--config profiles.json] [--log-requests 10000] [--verbose]

  --port N          TCP port on 127.0.0.1 (0 = pick a free one)
  --port-file F     once listening, the port number + "\\n" is written to F
                    (atomically: temp file + rename)
  --seed S          seed (string or number) for every deterministic decision
  --config F        JSON file {"model-id": {profile}, "*": {profile}}; these
                    profiles survive POST /_mock/reset
  --log-requests N  keep the last N provider requests (default 10000)
  --verbose         log every request to stderr (off by default: hot path)

"mock_llm listening on 127.0.0.1:PORT" is printed to stderr once listening.
SIGTERM / SIGINT stop the server and exit with status 0.

Provider endpoints (matched by path suffix, so any base-url prefix works)
-----------------------------------------------------------------------
  POST .../chat/completions   OpenAI chat completions
  POST .../messages           Anthropic messages
  POST .../embeddings         OpenAI-compatible embeddings

Validation is strict in both dialects, tool blocks included: OpenAI
(unknown top-level keys, roles system/developer/user/assistant/tool, content
as a string or text parts, assistant tool_calls {id, type "function",
function {name, arguments: a JSON string}}, every tool message answering an
earlier tool call id and every tool call answered, tools/tool_choice, stop,
response_format, seed); Anthropic (unknown top-level and message keys,
non-empty text blocks, tool_use only from the assistant with {id, name,
input object}, tool_result only from the user answering a tool_use of the
previous message, every tool_use answered in the next message, tools with an
object input_schema, tool_choice, stop_sequences, metadata).  A failure is
the provider's 400 with its message.

Auth: OpenAI style endpoints need "Authorization: Bearer <key>", Anthropic
needs "x-api-key: <key>" and "anthropic-version". Any non-empty key is
accepted unless the model's profile sets "api_key" (then it must match).

Token counting (exact, so tests can assert it)
---------------------------------------------
  prompt text   = "\\n".join(all text contents in order); for Anthropic the
                  system prompt comes first; content-block lists contribute
                  the "text" of their text blocks joined by "\\n".
                  For embeddings: "\\n".join(inputs).
  prompt tokens = len(prompt_text.split())   (whitespace separated words)
  completion tokens = len(answer.split()); for an OpenAI "signal" refusal the
                  refusal string is counted; content_filter counts 0.
  Tool turns: an OpenAI tool message's content, an Anthropic tool_result's
  content count as text (so one conversation has the same prompt tokens in
  both dialects).  A stop sequence of the request ("stop" / "stop_sequences")
  found in the answer cuts it there (finish_reason "stop" / stop_reason
  "stop_sequence").
  If the request's max_tokens (or max_completion_tokens) is smaller than the
  answer's word count, the answer is cut to max_tokens words and
  finish_reason is "length" (OpenAI) / stop_reason "max_tokens" (Anthropic).
  (oversize_bytes answers are never cut.)

Answer text
-----------
  Deterministic from (seed, profile, prompt text) - the model id is NOT an
  input, so two models with the same profile give the same text:
    opening (or a weighted pick from "openings") + filler words taken from a
    fixed 64-word vocabulary, total length_words (+/- length_jitter) words;
    first filler word capitalised, a "." appended to the last one.
  "echo": true  -> the last user message's content, verbatim.
  "fixed_text"  -> exactly that text.

Deterministic decisions
-----------------------
  Every probabilistic decision draws u in [0,1) from
      sha256(seed, model id, sha256(prompt text), decision name)
  (decisions: "error", "rate_limit", "refusal", "latency_jitter"), so the
  outcome depends only on the request, never on ordering or concurrency.
  The text-shaping decisions ("opening", "length_jitter", filler words) use
  the same construction with an empty model id (see "Answer text").
  A decision with rate r fires when u < r.

Profiles (per model id = the request's "model"; unknown models use "*")
----------------------------------------------------------------------
  latency_ms         number  fixed delay before answering (also before errors)
  latency_jitter_ms  number  + u * jitter ms extra
  error_rate         0..1    fraction answered with error_status
  error_status       int     default 500
  rate_limit_rate    0..1    fraction answered 429
  retry_after        number|null  Retry-After header value (seconds). For 429
                     it defaults to 1 when absent; null omits it. Other
                     errors (fail_first_n, error_rate) carry it only when set.
  fail_first_n       int     first N requests to this model (counted per model
                     id since the profile was set) fail with fail_status
  fail_status        int     default 503
  refusal_rate       0..1    fraction of chat answers that are refusals
  refusal_mode       "text" (default): answer text = refusal_text
                     "signal": OpenAI message.refusal = "I can't assist with
                       that request.", content null, finish_reason "stop";
                       Anthropic stop_reason "refusal" + text block
                       (refusal_text)
                     "content_filter": OpenAI finish_reason "content_filter",
                       content null; Anthropic stop_reason "refusal" with an
                       empty content list
  refusal_text       str     default "I cannot help with that."
  length_words       int     answer length in words incl. opening (default 30)
  length_jitter      int     +/- words, deterministic
  opening            str     first words of the answer (default
                     "Thanks for reaching out.")
  openings           [[phrase, weight], ...] weighted deterministic pick
  echo               bool    answer = last user message content
  fixed_text         str     answer = this text
  thinking_block     bool    Anthropic: a {"type":"thinking",...} block
                     precedes the text block
  thinking_text      str     text of that block
  tool_call          {"name": str, "arguments": {...}}  a request that offers
                     this tool and does not end with tool results is answered
                     with one call of it (OpenAI: message.tool_calls with
                     arguments as a JSON string, finish_reason "tool_calls";
                     Anthropic: a tool_use block, stop_reason "tool_use"); the
                     call id is derived from the prompt text ("call_<hex>" /
                     "toolu_<hex>"), so it is deterministic
  api_key            str|null  required key for this model
  embedding_dim      int     embedding dimension (default 64; the request's
                     "dimensions" field overrides)
  headers            {str: str}  extra response headers on every response
  Faults:
  hang               bool    read the request, never answer (until the client
                     goes away, 300 s, or shutdown); the connection is closed
  slow_drip_ms       number  send headers, then the body 1 byte every N ms
  truncate           bool    Content-Length of the full body, send only half,
                     close
  reset              bool    send headers + half the body, then RST
                     (SO_LINGER 0)
  malformed          "html"|"empty"|"truncated_json"|"no_fields"|
                     "content_null"|"invalid_utf8"|"not_json"  (200 bodies)
  oversize_bytes     int     answer text is exactly N ASCII bytes
  status, body       raw response: this status and body (str, or any JSON
                     value which is serialised) for every request
  fuzz_seed          int     every answer is a pseudo-random mutation of a
                     valid body of the request's dialect: byte flips,
                     truncation, deep nesting, huge or odd numbers, wrong
                     types, duplicate keys, unicode escapes (lone
                     surrogates, NUL), raw NUL and invalid UTF-8 bytes, other top-level
                     values, and a random status (200 most often; never 1xx,
                     204 or 304, which carry no body).  Deterministic from
                     (fuzz_seed, prompt text): the same prompt gets the same
                     bytes.  The mutations applied are named in the response
                     header X-Mock-Fuzz.
  Keys starting with "_" are ignored (comments); other unknown keys -> 400.

  Order of evaluation: auth + validation (4xx) -> hang -> latency ->
  status/body -> fuzz_seed -> fail_first_n -> rate_limit_rate -> error_rate -> build the
  answer (echo | fixed_text | oversize | refusal | generated) -> malformed ->
  delivery fault (reset | truncate | slow_drip_ms) -> normal send.

Embeddings
----------
  Bag of words: lowercased text split into \\w+ words; each word w gives
  d = sha256(w.encode()).digest(); index = int.from_bytes(d[0:4], "big") % dim;
  sign = +1 if d[4] & 1 else -1; summed then L2-normalised (all-zero stays
  zero). Independent of the seed. encoding_format "float" (default) or
  "base64" (little-endian float32).

Control API (JSON)
------------------
  GET    /_mock/health                 -> {"ok": true}
  PUT    /_mock/models/<model_id>      body = profile; replaces it and resets
                                       its fail_first_n counter and stats
  GET    /_mock/models                 -> {"models": {id: profile}}
  GET    /_mock/models/<model_id>      -> profile (404 if none)
  DELETE /_mock/models/<model_id>      -> {"ok": true} (404 if none)
  GET    /_mock/requests?model=X&limit=N
         -> [ {"seq", "ts", "path", "method", "model", "headers" (lowercased
              names; authorization / x-api-key values redacted to their first
              4 chars + "..."), "auth_present", "body" (parsed JSON or raw
              text), "status" (int, "hang", or null while in flight)} ... ]
            most recent last
  DELETE /_mock/requests               clears the log
  GET    /_mock/stats                  -> {"models": {model: {"requests": n,
              "by_status": {"200": n, ...}, "in_flight": n}}, "total": {...}}
              (requests without a model string are counted under "(none)")
  GET    /_mock/webhooks               alert payloads POSTed to any path ending in
                                       /webhook (?status=N makes it answer N)
  POST   /_mock/reset                  profiles back to --config, log and
                                       counters cleared
"""

import argparse
import base64
import hashlib
import http.server
import json
import math
import os
import re
import secrets
import select
import signal
import socket
import struct
import sys
import threading
import time
import traceback
import urllib.parse
from collections import deque
from functools import lru_cache

# --------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------

HOST = "127.0.0.1"
HANG_MAX_S = 300.0
DEFAULT_OPENING = "Thanks for reaching out."
DEFAULT_LENGTH_WORDS = 30
DEFAULT_REFUSAL_TEXT = "I cannot help with that."
OPENAI_REFUSAL_SIGNAL = "I can't assist with that request."
DEFAULT_THINKING = "The user needs a short, polite answer. Let me write one."
DEFAULT_EMBEDDING_DIM = 64
JSON_CT = "application/json"

# Fixed filler vocabulary: exactly 64 words, so one random byte % 64 picks a
# word without bias.
VOCAB = (
    "we will review your request and follow up with the details soon "
    "please check account settings for latest update our team can help "
    "confirm order status payment refund invoice ticket message email today "
    "again further access change data guide link note option page plan policy "
    "question record reply report step user value version process service "
    "issue information billing delivery support contact feedback schedule "
    "shortly"
).split()
assert len(VOCAB) == 64 and len(set(VOCAB)) == 64, len(VOCAB)

MALFORMED_KINDS = ("html", "empty", "truncated_json", "no_fields",
                   "content_null", "invalid_utf8", "not_json")
REFUSAL_MODES = ("text", "signal", "content_filter")
INVALID_UTF8_MARK = "\u0001INVALID_UTF8\u0001"

REASONS = {529: "Site Overloaded"}
for _s in http.HTTPStatus:
    REASONS[_s.value] = _s.phrase

SHUTDOWN = threading.Event()      # set when the server is stopping


def _reason(status):
    return REASONS.get(status, "Status")


def _dumps(obj):
    s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return s.encode()
    except UnicodeEncodeError:       # lone surrogates (e.g. echoed): escape them
        return json.dumps(obj, separators=(",", ":")).encode()


def _fmt_num(v):
    """Format a Retry-After value: 1 -> "1", 0.2 -> "0.2"."""
    return format(v, "g")


def _jtype(v):
    """JSON type name as OpenAI phrases it in its error messages."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a decimal"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) \
        and math.isfinite(v)


# --------------------------------------------------------------------------
# Profiles: validation
# --------------------------------------------------------------------------

class ProfileError(ValueError):
    pass


def _check_rate(v):
    return _is_num(v) and 0 <= v <= 1


def _check_nonneg(v):
    return _is_num(v) and v >= 0


def _check_nonneg_int(v):
    return _is_int(v) and v >= 0


def _check_status(v):
    return _is_int(v) and 100 <= v <= 599


def _check_openings(v):
    if not isinstance(v, list) or not v:
        return False
    total = 0
    for item in v:
        if not (isinstance(item, list) and len(item) == 2
                and isinstance(item[0], str) and _check_nonneg(item[1])):
            return False
        total += item[1]
    return total > 0


def _check_headers(v):
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items())


PROFILE_FIELDS = {
    "latency_ms": (_check_nonneg, "a number >= 0"),
    "latency_jitter_ms": (_check_nonneg, "a number >= 0"),
    "error_rate": (_check_rate, "a number in [0,1]"),
    "error_status": (_check_status, "an HTTP status"),
    "rate_limit_rate": (_check_rate, "a number in [0,1]"),
    "retry_after": (lambda v: v is None or _check_nonneg(v),
                    "a number >= 0 or null"),
    "fail_first_n": (_check_nonneg_int, "an integer >= 0"),
    "fail_status": (_check_status, "an HTTP status"),
    "refusal_rate": (_check_rate, "a number in [0,1]"),
    "refusal_mode": (lambda v: v in REFUSAL_MODES, "one of %s" % (REFUSAL_MODES,)),
    "refusal_text": (lambda v: isinstance(v, str), "a string"),
    "length_words": (_check_nonneg_int, "an integer >= 0"),
    "length_jitter": (_check_nonneg_int, "an integer >= 0"),
    "opening": (lambda v: isinstance(v, str), "a string"),
    "openings": (_check_openings, "a non-empty list of [phrase, weight>=0]"),
    "echo": (lambda v: isinstance(v, bool), "a boolean"),
    "fixed_text": (lambda v: isinstance(v, str), "a string"),
    "thinking_block": (lambda v: isinstance(v, bool), "a boolean"),
    "tool_call": (lambda v: isinstance(v, dict) and isinstance(v.get("name"), str)
                  and isinstance(v.get("arguments", {}), dict),
                  'an object {"name": str, "arguments": object}'),
    "thinking_text": (lambda v: isinstance(v, str), "a string"),
    "api_key": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "embedding_dim": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "headers": (_check_headers, "an object of strings"),
    "hang": (lambda v: isinstance(v, bool), "a boolean"),
    "slow_drip_ms": (_check_nonneg, "a number >= 0"),
    "truncate": (lambda v: isinstance(v, bool), "a boolean"),
    "reset": (lambda v: isinstance(v, bool), "a boolean"),
    "malformed": (lambda v: v is None or v in MALFORMED_KINDS,
                  "one of %s" % (MALFORMED_KINDS,)),
    "oversize_bytes": (_check_nonneg_int, "an integer >= 0"),
    "status": (_check_status, "an HTTP status"),
    "body": (lambda v: True, "anything"),
    "fuzz_seed": (_check_nonneg_int, "an integer >= 0"),
}


def validate_profile(profile):
    """Raise ProfileError if the profile has unknown keys or bad values."""
    if not isinstance(profile, dict):
        raise ProfileError("profile must be a JSON object")
    for key, value in profile.items():
        if key.startswith("_"):
            continue                      # comment keys
        spec = PROFILE_FIELDS.get(key)
        if spec is None:
            raise ProfileError("unknown profile field %r" % key)
        check, what = spec
        if not check(value):
            raise ProfileError("profile field %r must be %s" % (key, what))
    return profile


# --------------------------------------------------------------------------
# Server state (shared, guarded by one lock)
# --------------------------------------------------------------------------

class ProfileEntry:
    """A registered profile plus its per-model request counters."""
    __slots__ = ("profile", "counts")

    def __init__(self, profile):
        self.profile = profile
        self.counts = {}          # model id -> requests seen (fail_first_n)


class State:
    def __init__(self, seed, base_profiles, log_size):
        self.lock = threading.Lock()
        self.seed = str(seed).encode()
        self.base_profiles = base_profiles
        self.log = deque(maxlen=log_size)
        self.log_seq = 0
        self.stats = {}           # model -> {"requests", "by_status", "in_flight"}
        self.webhooks = []        # alert payloads POSTed to .../webhook
        self._load_base()

    def _load_base(self):
        self.profiles = {k: ProfileEntry(v) for k, v in self.base_profiles.items()}
        self.default_entry = ProfileEntry({})

    # -- profiles ---------------------------------------------------------
    def lookup(self, model):
        p = self.profiles
        entry = p.get(model) if model is not None else None
        if entry is None:
            entry = p.get("*") or self.default_entry
        return entry

    def set_profile(self, model, profile):
        with self.lock:
            self.profiles[model] = ProfileEntry(profile)
            st = self.stats.get(model)
            if st is not None:
                st["requests"] = 0
                st["by_status"] = {}

    def delete_profile(self, model):
        with self.lock:
            return self.profiles.pop(model, None) is not None

    def list_profiles(self):
        with self.lock:
            return {k: e.profile for k, e in self.profiles.items()}

    def next_count(self, entry, model):
        """Return how many requests this model already made under entry."""
        with self.lock:
            n = entry.counts.get(model, 0)
            entry.counts[model] = n + 1
            return n

    # -- request log and stats --------------------------------------------
    def begin(self, model, record):
        with self.lock:
            st = self.stats.get(model)
            if st is None:
                st = self.stats[model] = {"requests": 0, "by_status": {},
                                          "in_flight": 0}
            st["requests"] += 1
            st["in_flight"] += 1
            if record is not None:
                self.log_seq += 1
                record["seq"] = self.log_seq
                self.log.append(record)

    def end(self, model, status, record):
        key = str(status)
        with self.lock:
            st = self.stats.get(model)
            if st is None:            # reset while in flight
                st = self.stats[model] = {"requests": 0, "by_status": {},
                                          "in_flight": 1}
            st["in_flight"] -= 1
            bs = st["by_status"]
            bs[key] = bs.get(key, 0) + 1
            if record is not None:
                record["status"] = status

    def get_requests(self, model, limit):
        with self.lock:
            items = list(self.log)
        if model is not None:
            items = [r for r in items if r.get("model") == model]
        if limit is not None:
            items = items[-limit:] if limit > 0 else []
        return items

    def clear_requests(self):
        with self.lock:
            n = len(self.log)
            self.log.clear()
            return n

    def get_stats(self):
        with self.lock:
            models = {m: {"requests": s["requests"],
                          "by_status": dict(s["by_status"]),
                          "in_flight": s["in_flight"]}
                      for m, s in self.stats.items()}
        total = {"requests": 0, "by_status": {}, "in_flight": 0}
        for s in models.values():
            total["requests"] += s["requests"]
            total["in_flight"] += s["in_flight"]
            for k, v in s["by_status"].items():
                total["by_status"][k] = total["by_status"].get(k, 0) + v
        return {"models": models, "total": total}

    def reset(self):
        with self.lock:
            self._load_base()
            self.log.clear()
            # keep in-flight requests visible so counts never go negative
            self.stats = {m: {"requests": 0, "by_status": {},
                              "in_flight": s["in_flight"]}
                          for m, s in self.stats.items() if s["in_flight"] > 0}


STATE = None        # set in main()
VERBOSE = False


# --------------------------------------------------------------------------
# Determinism helpers
# --------------------------------------------------------------------------

class Decider:
    """Deterministic draws for one request: sha256(seed, model, prompt, name)."""
    __slots__ = ("seed", "model", "pdigest")

    def __init__(self, seed, model, prompt_text):
        self.seed = seed
        self.model = (model or "").encode()
        self.pdigest = hashlib.sha256(prompt_text.encode("utf-8", "surrogatepass")).digest()

    def _key(self, name, with_model):
        m = self.model if with_model else b""
        return b"%s\x00%s\x00%s\x00%s" % (self.seed, m, self.pdigest, name.encode())

    def unit(self, name, with_model=True):
        """A uniform float in [0, 1)."""
        d = hashlib.sha256(self._key(name, with_model)).digest()
        return int.from_bytes(d[:8], "big") / 18446744073709551616.0

    def key_hex(self, name):
        """A deterministic hex string (no model id: the same in both dialects)."""
        return hashlib.sha256(self._key(name, False)).hexdigest()

    def stream(self, name, n):
        """n deterministic bytes (text shaping: no model id)."""
        return hashlib.shake_256(self._key(name, False)).digest(n)


def generate_text(profile, dec):
    """Opening + filler words, deterministic from (seed, profile, prompt)."""
    openings = profile.get("openings")
    if openings:
        total_w = sum(w for _, w in openings)
        x = dec.unit("opening", with_model=False) * total_w
        opening = openings[-1][0]
        acc = 0.0
        for phrase, w in openings:
            acc += w
            if x < acc and w > 0:
                opening = phrase
                break
    else:
        opening = profile.get("opening", DEFAULT_OPENING)

    n = profile.get("length_words", DEFAULT_LENGTH_WORDS)
    jit = profile.get("length_jitter", 0)
    if jit:
        n += int(dec.unit("length_jitter", with_model=False) * (2 * jit + 1)) - jit
    n = max(n, 0)

    words = opening.split()
    nfill = n - len(words)
    if nfill <= 0:
        return opening
    raw = dec.stream("filler", nfill)
    filler = [VOCAB[b & 63] for b in raw]
    filler[0] = filler[0].capitalize()
    filler[-1] += "."
    return (opening + " " if opening else "") + " ".join(filler)


def oversize_text(n):
    """Exactly n ASCII bytes of filler words."""
    pattern = " ".join(VOCAB) + " "
    text = (pattern * (n // len(pattern) + 1))[:n]
    if text.endswith(" "):
        text = text[:-1] + "."
    return text


@lru_cache(maxsize=65536)
def _word_slot(word):
    d = hashlib.sha256(word.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(d[0:4], "big"), (1.0 if d[4] & 1 else -1.0)


_WORD_RE = re.compile(r"\w+")


def embed(text, dim):
    """Bag-of-words hashing embedding, L2-normalised."""
    vec = [0.0] * dim
    for w in _WORD_RE.findall(text.lower()):
        h, sign = _word_slot(w)
        vec[h % dim] += sign
    norm = math.sqrt(sum(v * v for v in vec))
    if norm > 0:
        vec = [v / norm for v in vec]
    return vec


# --------------------------------------------------------------------------
# Provider dialects: error bodies, validation, success bodies
# --------------------------------------------------------------------------

OPENAI_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer "
    "YOUR_KEY), or as the password field (with blank username) if you're "
    "accessing the API from your browser and are prompted for a username and "
    "password. You can obtain an API key from "
    "https://platform.openai.com/account/api-keys.")
OPENAI_BAD_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely "
    "means you aren't using your HTTP library correctly. The OpenAI API "
    "expects a JSON payload, but what was sent was not valid JSON. If you "
    "have trouble figuring out how to fix this, please contact us through "
    "our help center at help.openai.com.)")

OPENAI_ERRORS = {
    401: ("Incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to access this resource.", "invalid_request_error", None),
    404: ("The model does not exist or you do not have access to it.",
          "invalid_request_error", "model_not_found"),
    429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request. Sorry about that!",
          "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The engine is currently overloaded, please try again later.",
          "server_error", None),
}

ANTHROPIC_ERRORS = {
    400: ("invalid_request_error", "Invalid request"),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


def openai_error(status, message=None, param=None, etype=None, code=None):
    d_msg, d_type, d_code = OPENAI_ERRORS.get(
        status, ("Mock error (status %d)" % status,
                 "server_error" if status >= 500 else "invalid_request_error", None))
    if message is None:
        message, code = d_msg, d_code
    return _dumps({"error": {"message": message, "type": etype or d_type,
                             "param": param, "code": code}})


def anthropic_error(status, message=None, etype=None):
    d_type, d_msg = ANTHROPIC_ERRORS.get(
        status, ("api_error" if status >= 500 else "invalid_request_error",
                 "Mock error (status %d)" % status))
    return _dumps({"type": "error",
                   "error": {"type": etype or d_type, "message": message or d_msg}})


class BadRequest(Exception):
    """Validation failure: (message, param)."""

    def __init__(self, message, param=None):
        super().__init__(message)
        self.message = message
        self.param = param


OPENAI_CHAT_KEYS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stop", "seed", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "user", "frequency_penalty", "presence_penalty",
    "logit_bias", "logprobs", "top_logprobs", "metadata", "store",
    "service_tier", "reasoning_effort", "stream", "stream_options",
    "modalities", "prediction", "audio"}
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _openai_content(content, p, null_ok):
    """Text of an OpenAI message content (string or text parts)."""
    if content is None and null_ok:
        return None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            w = "%s.content[%d]" % (p, j)
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequest("Invalid value for '%s.type': expected 'text'." % w, w)
            if not isinstance(part.get("text"), str):
                raise BadRequest("Missing required parameter: '%s.text'." % w, w)
            texts.append(part["text"])
        return "".join(texts)
    raise BadRequest("Invalid type for '%s.content': expected one of a string "
                     "or array of objects, but got %s instead."
                     % (p, _jtype(content)), p + ".content")


def _openai_tool_calls(calls, p, known_ids):
    if not isinstance(calls, list) or not calls:
        raise BadRequest("Invalid '%s.tool_calls': expected a non-empty array."
                         % p, p + ".tool_calls")
    for j, tc in enumerate(calls):
        w = "%s.tool_calls[%d]" % (p, j)
        if not isinstance(tc, dict):
            raise BadRequest("Invalid type for '%s': expected an object." % w, w)
        if not isinstance(tc.get("id"), str) or not tc["id"]:
            raise BadRequest("Missing required parameter: '%s.id'." % w, w + ".id")
        if tc.get("type") != "function":
            raise BadRequest("Missing required parameter: '%s.type'." % w, w + ".type")
        fn = tc.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                or not fn["name"]:
            raise BadRequest("Missing required parameter: '%s.function.name'." % w,
                             w + ".function")
        if not isinstance(fn.get("arguments"), str):
            raise BadRequest("Missing required parameter: '%s.function.arguments'."
                             % w, w + ".function.arguments")
        try:
            json.loads(fn["arguments"])
        except ValueError:
            raise BadRequest("Invalid '%s.function.arguments': not valid JSON." % w,
                             w + ".function.arguments")
        known_ids.add(tc["id"])


def _openai_tools(body):
    tools = body.get("tools")
    names = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("Invalid type for 'tools': expected an array.", "tools")
        for i, t in enumerate(tools):
            w = "tools[%d]" % i
            if not isinstance(t, dict) or t.get("type") != "function":
                raise BadRequest("Missing required parameter: '%s.type'." % w, w)
            fn = t.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) \
                    or not TOOL_NAME_RE.match(fn["name"]):
                raise BadRequest("Invalid '%s.function.name': string does not "
                                 "match pattern." % w, w + ".function.name")
            if "description" in fn and not isinstance(fn["description"], str):
                raise BadRequest("Invalid type for '%s.function.description'." % w, w)
            if "parameters" in fn and not isinstance(fn["parameters"], dict):
                raise BadRequest("Invalid type for '%s.function.parameters': "
                                 "expected an object." % w, w)
            names.add(fn["name"])
    tc = body.get("tool_choice")
    if tc is not None:
        if tools is None:
            raise BadRequest("Invalid value for 'tool_choice': 'tool_choice' is "
                             "only allowed when 'tools' are specified.", "tool_choice")
        if isinstance(tc, str):
            if tc not in ("none", "auto", "required"):
                raise BadRequest("Invalid value for 'tool_choice'.", "tool_choice")
        elif not (isinstance(tc, dict) and tc.get("type") == "function" and
                  isinstance(tc.get("function"), dict) and
                  tc["function"].get("name") in names):
            raise BadRequest("Invalid value for 'tool_choice'.", "tool_choice")
    return names


def validate_openai_chat(body):
    """Validate like OpenAI; return (prompt_parts, last_user, max_tokens, extra)."""
    if not isinstance(body, dict):
        raise BadRequest("Invalid type for request body: expected an object, "
                         "but got %s instead." % _jtype(body))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    for k in body:
        if k not in OPENAI_CHAT_KEYS:
            raise BadRequest("Unrecognized request argument supplied: %s" % k, k)
    msgs = body.get("messages")
    if msgs is None:
        raise BadRequest("Missing required parameter: 'messages'.", "messages")
    if not isinstance(msgs, list):
        raise BadRequest("Invalid type for 'messages': expected an array, but "
                         "got %s instead." % _jtype(msgs), "messages")
    if not msgs:
        raise BadRequest("Invalid 'messages': empty array. Expected an array "
                         "with minimum length 1, but got an empty array "
                         "instead.", "messages")
    tool_names = _openai_tools(body)
    parts = []
    last_user = None
    call_ids = set()
    answered = set()
    for i, m in enumerate(msgs):
        p = "messages[%d]" % i
        if not isinstance(m, dict):
            raise BadRequest("Invalid type for '%s': expected an object, but "
                             "got %s instead." % (p, _jtype(m)), p)
        role = m.get("role")
        if role is None:
            raise BadRequest("Missing required parameter: '%s.role'." % p, p + ".role")
        if role not in ("system", "user", "assistant", "developer", "tool"):
            raise BadRequest("Invalid value: %s. Supported values are: "
                             "'system', 'assistant', 'user', 'tool', and 'developer'."
                             % json.dumps(role), p + ".role")
        if role == "assistant" and m.get("tool_calls") is not None:
            _openai_tool_calls(m["tool_calls"], p, call_ids)
            content = _openai_content(m.get("content"), p, True)
        else:
            if "content" not in m:
                raise BadRequest("Missing required parameter: '%s.content'." % p,
                                 p + ".content")
            content = _openai_content(m["content"], p, False)
        if role == "tool":
            tcid = m.get("tool_call_id")
            if not isinstance(tcid, str) or not tcid:
                raise BadRequest("Missing required parameter: '%s.tool_call_id'."
                                 % p, p + ".tool_call_id")
            if tcid not in call_ids:
                raise BadRequest("Invalid parameter: messages with role 'tool' "
                                 "must be a response to a preceeding message with "
                                 "'tool_calls'.", p + ".tool_call_id")
            answered.add(tcid)
        if content is not None:
            parts.append(content)
        if role == "user":
            last_user = content
    missing = call_ids - answered
    if missing:
        raise BadRequest("An assistant message with 'tool_calls' must be followed "
                         "by tool messages responding to each 'tool_call_id'. The "
                         "following tool_call_ids did not have response messages: %s"
                         % ", ".join(sorted(missing)), "messages")
    mt = body.get("max_tokens")
    mct = body.get("max_completion_tokens")
    for name, v in (("max_tokens", mt), ("max_completion_tokens", mct)):
        if v is None:
            continue
        if not _is_int(v):
            raise BadRequest("Invalid type for '%s': expected an integer, but "
                             "got %s instead." % (name, _jtype(v)), name)
        if v < 1:
            raise BadRequest("Invalid '%s': integer below minimum value. "
                             "Expected a value >= 1, but got %d instead."
                             % (name, v), name)
    if mt is not None and mct is not None:
        raise BadRequest("Setting 'max_tokens' and 'max_completion_tokens' at "
                         "the same time is not supported.", "max_tokens")
    t = body.get("temperature")
    if t is not None:
        if not _is_num(t):
            raise BadRequest("Invalid type for 'temperature': expected a "
                             "decimal, but got %s instead." % _jtype(t),
                             "temperature")
        if t < 0:
            raise BadRequest("Invalid 'temperature': decimal below minimum "
                             "value. Expected a value >= 0, but got %s "
                             "instead." % t, "temperature")
        if t > 2:
            raise BadRequest("Invalid 'temperature': decimal above maximum "
                             "value. Expected a value <= 2, but got %s "
                             "instead." % t, "temperature")
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(x, str) for x in stop):
        stops = stop
    else:
        raise BadRequest("Invalid 'stop': expected a string or an array of at "
                         "most 4 strings.", "stop")
    rf = body.get("response_format")
    if rf is not None:
        if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object",
                                                               "json_schema"):
            raise BadRequest("Invalid value for 'response_format.type'.",
                             "response_format")
        if rf["type"] == "json_schema" and not isinstance(rf.get("json_schema"), dict):
            raise BadRequest("Missing required parameter: "
                             "'response_format.json_schema'.", "response_format")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise BadRequest("Invalid type for 'seed': expected an integer.", "seed")
    if body.get("stream"):
        raise BadRequest("The mock does not stream.", "stream")
    after_tool = msgs[-1].get("role") == "tool"
    extra = {"stops": stops, "tools": tool_names, "after_tool": after_tool}
    return parts, last_user, (mt if mt is not None else mct), extra


ANTHROPIC_KEYS = {
    "model", "messages", "max_tokens", "system", "temperature", "top_p",
    "top_k", "stop_sequences", "stream", "metadata", "tools", "tool_choice",
    "thinking", "service_tier"}


def _anthropic_content_text(content, where, role=None, tool_uses=None,
                            results=None):
    """Text of an Anthropic content (string or list of blocks).

    role (of the message) enables the tool block checks: tool_use only from
    the assistant (its ids go into tool_uses), tool_result only from the user,
    answering an id in tool_uses (collected into results).
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadRequest("%s: Input should be a valid string or a valid list "
                         "of content blocks" % where)
    texts = []
    for j, blk in enumerate(content):
        w = "%s.%d" % (where, j)
        if not isinstance(blk, dict):
            raise BadRequest("%s: Input should be a valid dictionary" % w)
        btype = blk.get("type")
        if not isinstance(btype, str):
            raise BadRequest("%s.type: Field required" % w)
        if btype == "text":
            if not isinstance(blk.get("text"), str):
                raise BadRequest("%s.text: Field required" % w)
            if role is not None and not blk["text"]:
                raise BadRequest("%s: text content blocks must be non-empty" % w)
            texts.append(blk["text"])
        elif btype == "tool_use" and role is not None:
            if role != "assistant":
                raise BadRequest("%s: tool_use blocks are only allowed in "
                                 "assistant messages" % w)
            if not isinstance(blk.get("id"), str) or not blk["id"]:
                raise BadRequest("%s.id: Field required" % w)
            if not isinstance(blk.get("name"), str) or not TOOL_NAME_RE.match(blk["name"]):
                raise BadRequest("%s.name: String should match pattern" % w)
            if not isinstance(blk.get("input"), dict):
                raise BadRequest("%s.input: Input should be a valid dictionary" % w)
            tool_uses.add(blk["id"])
        elif btype == "tool_result" and role is not None:
            if role != "user":
                raise BadRequest("%s: tool_result blocks are only allowed in "
                                 "user messages" % w)
            tid = blk.get("tool_use_id")
            if not isinstance(tid, str) or not tid:
                raise BadRequest("%s.tool_use_id: Field required" % w)
            if tid not in tool_uses:
                raise BadRequest("%s: unexpected `tool_use_id` found in "
                                 "`tool_result` blocks: %s. Each `tool_result` "
                                 "block must have a corresponding `tool_use` "
                                 "block in the previous message." % (w, tid))
            rc = blk.get("content", "")
            texts.append(_anthropic_content_text(rc, w + ".content"))
            results.add(tid)
        elif role is not None and btype not in ("image", "document", "thinking",
                                                "redacted_thinking"):
            raise BadRequest("%s.type: Input tag '%s' found using 'type' does not "
                             "match any of the expected tags" % (w, btype))
    return "\n".join(texts)


def _anthropic_tools(body):
    tools = body.get("tools")
    names = set()
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("tools: Input should be a valid list")
        for i, t in enumerate(tools):
            w = "tools.%d" % i
            if not isinstance(t, dict):
                raise BadRequest("%s: Input should be a valid dictionary" % w)
            for k in t:
                if k not in ("name", "description", "input_schema", "type",
                             "cache_control"):
                    raise BadRequest("%s.%s: Extra inputs are not permitted" % (w, k))
            if not isinstance(t.get("name"), str) or not TOOL_NAME_RE.match(t["name"]):
                raise BadRequest("%s.name: String should match pattern" % w)
            sch = t.get("input_schema")
            if not isinstance(sch, dict) or sch.get("type") != "object":
                raise BadRequest("%s.input_schema: Field required (an object "
                                 "schema)" % w)
            if "description" in t and not isinstance(t["description"], str):
                raise BadRequest("%s.description: Input should be a valid string" % w)
            names.add(t["name"])
    tc = body.get("tool_choice")
    if tc is not None:
        if not isinstance(tc, dict) or tc.get("type") not in ("auto", "any", "tool",
                                                              "none"):
            raise BadRequest("tool_choice: Input tag does not match any of the "
                             "expected tags: 'auto', 'any', 'tool', 'none'")
        if tc["type"] == "tool" and tc.get("name") not in names:
            raise BadRequest("tool_choice.name: Tool not found")
        if tools is None and tc["type"] != "none":
            raise BadRequest("tool_choice: may only be specified while providing tools")
    return names


def validate_anthropic(body):
    """Validate like Anthropic; return (prompt_parts, last_user, max_tokens, extra)."""
    if not isinstance(body, dict):
        raise BadRequest("Input should be a valid dictionary")
    model = body.get("model")
    if model is None:
        raise BadRequest("model: Field required")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Input should be a valid string")
    for k in body:
        if k not in ANTHROPIC_KEYS:
            raise BadRequest("%s: Extra inputs are not permitted" % k)
    if "max_tokens" not in body:
        raise BadRequest("max_tokens: Field required")
    mt = body["max_tokens"]
    if not _is_int(mt):
        raise BadRequest("max_tokens: Input should be a valid integer")
    if mt < 1:
        raise BadRequest("max_tokens: Input should be greater than or equal to 1")
    msgs = body.get("messages")
    if msgs is None:
        raise BadRequest("messages: Field required")
    if not isinstance(msgs, list):
        raise BadRequest("messages: Input should be a valid list")
    if not msgs:
        raise BadRequest("messages: List should have at least 1 item after "
                         "validation, not 0")
    tool_names = _anthropic_tools(body)
    parts = []
    system = body.get("system")
    if system is not None:
        if isinstance(system, list):
            parts.append(_anthropic_content_text(system, "system"))
        elif isinstance(system, str):
            parts.append(system)
        else:
            raise BadRequest("system: Input should be a valid string")
    last_user = None
    pending_uses = set()
    after_tool = False
    for i, m in enumerate(msgs):
        w = "messages.%d" % i
        if not isinstance(m, dict):
            raise BadRequest("%s: Input should be a valid dictionary" % w)
        role = m.get("role")
        if role is None:
            raise BadRequest("%s.role: Field required" % w)
        if role not in ("user", "assistant"):
            raise BadRequest("%s.role: Input should be 'user' or 'assistant'" % w)
        for k in m:
            if k not in ("role", "content"):
                raise BadRequest("%s.%s: Extra inputs are not permitted" % (w, k))
        if "content" not in m:
            raise BadRequest("%s.content: Field required" % w)
        uses = set()
        results = set()
        known = pending_uses if role == "user" else uses
        text = _anthropic_content_text(m["content"], w + ".content", role, known,
                                       results)
        if role == "user":
            if pending_uses - results:
                raise BadRequest("%s: `tool_use` ids were found without "
                                 "`tool_result` blocks immediately after: %s. Each "
                                 "`tool_use` block must have a corresponding "
                                 "`tool_result` block in the next message."
                                 % (w, ", ".join(sorted(pending_uses - results))))
            pending_uses = set()
            after_tool = bool(results)
        else:
            if pending_uses:
                raise BadRequest("%s: `tool_use` ids were found without "
                                 "`tool_result` blocks immediately after" % w)
            pending_uses = uses
        parts.append(text)
        if role == "user":
            last_user = text
    t = body.get("temperature")
    if t is not None:
        if not _is_num(t):
            raise BadRequest("temperature: Input should be a valid number")
        if t < 0:
            raise BadRequest("temperature: Input should be greater than or equal to 0")
        if t > 1:
            raise BadRequest("temperature: Input should be less than or equal to 1")
    ss = body.get("stop_sequences")
    if ss is not None and not (isinstance(ss, list) and all(isinstance(x, str) for x in ss)):
        raise BadRequest("stop_sequences: Input should be a valid list of strings")
    md = body.get("metadata")
    if md is not None and not (isinstance(md, dict) and set(md) <= {"user_id"}):
        raise BadRequest("metadata: Extra inputs are not permitted")
    if body.get("stream"):
        raise BadRequest("stream: the mock does not stream")
    extra = {"stops": ss or [], "tools": tool_names,
             "after_tool": after_tool and msgs[-1].get("role") == "user"}
    return parts, last_user, mt, extra


def validate_embeddings(body):
    """Return (inputs, dimensions or None, encoding_format)."""
    if not isinstance(body, dict):
        raise BadRequest("Invalid type for request body: expected an object, "
                         "but got %s instead." % _jtype(body))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    inp = body.get("input")
    if inp is None:
        raise BadRequest("Missing required parameter: 'input'.", "input")
    if isinstance(inp, str):
        inputs = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(x, str) for x in inp):
        inputs = inp
    else:
        raise BadRequest("'$.input' is invalid. Please check the API reference: "
                         "https://platform.openai.com/docs/api-reference.", "input")
    dims = body.get("dimensions")
    if dims is not None and not (_is_int(dims) and dims >= 1):
        raise BadRequest("Invalid 'dimensions': expected an integer >= 1.",
                         "dimensions")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest("Invalid value: %s. Supported values are: 'float' and "
                         "'base64'." % json.dumps(fmt), "encoding_format")
    return inputs, dims, fmt


def _cut_words(text, max_words):
    """Cut text to max_words words; return (text, was_cut)."""
    if max_words is None:
        return text, False
    words = text.split()
    if len(words) <= max_words:
        return text, False
    return " ".join(words[:max_words]), True


def build_chat_answer(profile, dec, last_user, max_tokens, extra=None):
    """Decide what the model "says".

    Returns dict(text, refusal_signal, finish, tool_call) where finish is one
    of "stop", "length", "refusal", "content_filter", "tool_calls",
    "stop_sequence"; text may be None.  With the profile's "tool_call"
    ({"name", "arguments"}), a request that offers that tool and does not
    end with tool results is answered with a call of it (id derived from the
    prompt, so deterministic).  The request's stop sequences cut the text.
    """
    extra = extra or {}
    tc = profile.get("tool_call")
    if tc and tc.get("name") in extra.get("tools", ()) and not extra.get("after_tool"):
        return {"text": None, "refusal": None, "finish": "tool_calls",
                "tool_call": {"id": "call_" + dec.key_hex("tool_call")[:16],
                              "name": tc["name"],
                              "arguments": tc.get("arguments", {})}}
    if "oversize_bytes" in profile:
        return {"text": oversize_text(profile["oversize_bytes"]),
                "refusal": None, "finish": "stop"}
    rr = profile.get("refusal_rate", 0)
    if rr and dec.unit("refusal") < rr:
        mode = profile.get("refusal_mode", "text")
        rtext = profile.get("refusal_text", DEFAULT_REFUSAL_TEXT)
        if mode == "signal":
            return {"text": rtext, "refusal": OPENAI_REFUSAL_SIGNAL,
                    "finish": "refusal"}
        if mode == "content_filter":
            return {"text": None, "refusal": None, "finish": "content_filter"}
        text, finish = rtext, "stop"
    elif profile.get("echo"):
        text, finish = (last_user or ""), "stop"
    elif "fixed_text" in profile:
        text, finish = profile["fixed_text"], "stop"
    else:
        text, finish = generate_text(profile, dec), "stop"
    for stop in extra.get("stops", ()):
        k = text.find(stop) if stop else -1
        if k >= 0:
            text, finish = text[:k], "stop_sequence"
    text, cut = _cut_words(text, max_tokens)
    return {"text": text, "refusal": None, "finish": "length" if cut else finish}


def openai_chat_body(model, ans, prompt_tokens, malformed=None):
    text = ans["text"]
    finish = ans["finish"]
    refusal = None
    tool_calls = None
    if finish == "refusal":              # "signal" refusal
        refusal, text, finish = ans["refusal"], None, "stop"
        ctoks = len(refusal.split())
    elif finish == "tool_calls":
        tc = ans["tool_call"]
        tool_calls = [{"id": tc["id"], "type": "function",
                       "function": {"name": tc["name"],
                                    "arguments": json.dumps(tc["arguments"])}}]
        ctoks = len(json.dumps(tc["arguments"]).split())
    elif finish == "stop_sequence":
        finish, ctoks = "stop", len(text.split())
    elif finish == "content_filter":
        text, ctoks = None, 0
    else:
        ctoks = len(text.split())
    rid = "chatcmpl-" + secrets.token_hex(12)
    if malformed == "no_fields":
        return {"id": rid, "object": "chat.completion",
                "created": int(time.time()), "model": model}
    if malformed == "content_null":
        text, refusal = None, None
    elif malformed == "invalid_utf8":
        text = INVALID_UTF8_MARK
    message = {"role": "assistant", "content": text, "refusal": refusal}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0,
                     "message": message,
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": ctoks,
                  "total_tokens": prompt_tokens + ctoks},
    }


def anthropic_body(model, ans, prompt_tokens, profile, malformed=None):
    finish = ans["finish"]
    text = ans["text"]
    stop = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
            "stop_sequence": "stop_sequence",
            "refusal": "refusal", "content_filter": "refusal"}[finish]
    rid = "msg_" + secrets.token_hex(12)
    if malformed == "no_fields":
        return {"id": rid, "type": "message", "role": "assistant", "model": model}
    if malformed == "invalid_utf8" and text is not None:
        text = INVALID_UTF8_MARK
    content = []
    if profile.get("thinking_block"):
        content.append({"type": "thinking",
                        "thinking": profile.get("thinking_text", DEFAULT_THINKING),
                        "signature": "mock-signature"})
    if text is not None:
        content.append({"type": "text", "text": text})
    ctoks = len(text.split()) if text is not None else 0
    if finish == "tool_calls":
        tc = ans["tool_call"]
        content.append({"type": "tool_use", "id": "toolu_" + tc["id"][5:],
                        "name": tc["name"], "input": tc["arguments"]})
        ctoks = len(json.dumps(tc["arguments"]).split())
    return {
        "id": rid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": None if malformed == "content_null" else content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": ctoks},
    }


# --------------------------------------------------------------------------
# Fuzzing: deterministic mutations of valid bodies (profile "fuzz_seed")
# --------------------------------------------------------------------------

FUZZ_STATUSES = (200,) * 12 + (201, 203, 400, 401, 404, 409, 413, 429, 500,
                               502, 503, 529, 599)
FUZZ_ODD_STRINGS = ("\\ud800", "\\udc00", "\\udbff\\udfff", "\\u0000", "\\uffff",
                    "\\ud83d\\ude00", "\\u00e9", "\\\\", "\\\"", "\\/", "\\x", "\\u12")
FUZZ_ODD_VALUES = ("null", "true", "false", "0", "-1", "1.5", "1e400", "-1e400",
                   "99999999999999999999999999999999", "2147483648", "-0", "[]", "{}",
                   '""', '"text"', "[null]", '{"text": null}', "NaN", "Infinity")


def _fuzz_valid(rng, model, anthropic, ptoks):
    """A valid body of the dialect, as a Python object."""
    text = " ".join(rng.choice(VOCAB) for _ in range(rng.randrange(0, 12)))
    ans = {"text": text, "refusal": None,
           "finish": rng.choice(("stop", "stop", "length", "content_filter"))}
    if anthropic:
        obj = anthropic_body(model, ans, ptoks, {"thinking_block": rng.random() < 0.2})
    else:
        obj = openai_chat_body(model, ans, ptoks)
        obj["created"] = 1700000000
    obj["id"] = "fuzz-%016x" % rng.getrandbits(64)      # deterministic
    return obj


def _fuzz_paths(obj, path=()):
    """Every (path, value) of a JSON object."""
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _fuzz_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _fuzz_paths(v, path + (i,))


def _fuzz_set(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value


def fuzz_response(fuzz_seed, prompt_text, model, anthropic, ptoks):
    """Return (status, body bytes, names of the mutations applied)."""
    import random
    digest = hashlib.sha256(b"%d\x00%s" % (fuzz_seed, prompt_text.encode(
        "utf-8", "surrogatepass"))).digest()
    rng = random.Random(digest)
    obj = _fuzz_valid(rng, model, anthropic, ptoks)
    names = []
    # structural mutations, on the object
    for _ in range(rng.randrange(0, 3)):
        paths = [p for p, _ in _fuzz_paths(obj) if p]
        if not paths:
            break
        path = rng.choice(paths)
        m = rng.randrange(4)
        if m == 0:          # wrong type / odd value (stands for raw JSON text)
            _fuzz_set(obj, path, {"__raw__": rng.choice(FUZZ_ODD_VALUES)})
            names.append("type")
        elif m == 1:        # deep nesting
            depth = rng.choice((2, 10, 63, 64, 65, 100, 1000, 5000))
            _fuzz_set(obj, path, {"__raw__": "[" * depth + "1" + "]" * depth})
            names.append("nest%d" % depth)
        elif m == 2:        # odd string
            _fuzz_set(obj, path, {"__raw__": '"a%sb"' % rng.choice(FUZZ_ODD_STRINGS)})
            names.append("string")
        else:               # delete
            parent = obj
            for k in path[:-1]:
                parent = parent[k]
            del parent[path[-1]]
            names.append("delete")
    out = _dumps(obj)
    # stand-ins for raw JSON text
    out = re.sub(rb'\{"__raw__":"((?:[^"\\]|\\.)*)"\}',
                 lambda mo: json.loads(b'"' + mo.group(1) + b'"').encode(
                     "utf-8", "surrogatepass"), out)
    # byte-level mutations, on the serialised body
    for _ in range(rng.randrange(0, 3)):
        m = rng.randrange(7)
        b = bytearray(out)
        if m == 0 and b:      # byte flips
            for _ in range(rng.randrange(1, 4)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
            names.append("flip")
        elif m == 1:          # truncation
            b = b[:rng.randrange(len(b) + 1)]
            names.append("truncate")
        elif m == 2:          # duplicate key
            key = rng.choice((b'"choices"', b'"content"', b'"usage"', b'"error"',
                              b'"type"', b'"stop_reason"'))
            val = rng.choice((b'null', b'[]', b'{}', b'"dup"', b'[{"message":{"content":"dup"}}]',
                              b'[{"type":"text","text":"dup"}]', b'{"message":"dup"}'))
            if b.startswith(b"{"):
                b = b[:1] + key + b":" + val + b"," + b[1:]
            names.append("dupkey")
        elif m == 3:          # raw NUL or invalid UTF-8
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.choice((b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"))
            names.append("bytes")
        elif m == 4:          # another top-level value
            b = bytearray(rng.choice((b"", b" ", b"null", b"[]", b'"x"', b"1",
                                      b"{}", b"{", b"}", b"[" * 100000)))
            names.append("toplevel")
        elif m == 5:          # huge number in place of a token count
            b = re.sub(rb'("(?:prompt|completion|input|output)_tokens":)\d+',
                       lambda mo: mo.group(1) + rng.choice(
                           (b"1" * 400, b"-5", b"1e309", b"3.7", b"2147483648")), bytes(b))
            b = bytearray(b)
            names.append("number")
        else:                 # garbage appended
            b += rng.choice((b"}", b"]", b",", b" trailing", b"\x00", b"{}"))
            names.append("append")
        out = bytes(b)
    status = rng.choice(FUZZ_STATUSES)
    if status != 200:
        names.append("status%d" % status)
    return status, bytes(out), names or ["none"]


# --------------------------------------------------------------------------
# HTTP handler
# --------------------------------------------------------------------------

def _redact(v):
    return v[:4] + "..."


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock_llm/1.0"
    disable_nagle_algorithm = True       # small responses: no Nagle delays
    timeout = 300                        # idle keep-alive connections

    # ---- plumbing -------------------------------------------------------
    def log_message(self, fmt, *args):
        if VERBOSE:
            sys.stderr.write("mock_llm: %s - %s\n" % (self.address_string(), fmt % args))

    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass              # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        n = self.headers.get("Content-Length")
        if not n:
            return b""
        n = int(n)
        if n < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(n)

    def _head(self, status, length, ctype, extra):
        lines = ["HTTP/1.1 %d %s\r\n" % (status, _reason(status)),
                 "Server: mock_llm\r\n"]
        if ctype:
            lines.append("Content-Type: %s\r\n" % ctype)
        lines.append("Content-Length: %d\r\n" % length)
        if extra:
            for k, v in extra:
                lines.append("%s: %s\r\n" % (k, v))
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    def _send(self, status, body, ctype=JSON_CT, extra=None):
        """Send a complete response in one write."""
        self.wfile.write(self._head(status, len(body), ctype, extra) + body)
        if VERBOSE:
            self.log_request(status, len(body))

    def _json(self, status, obj):
        self._send(status, _dumps(obj))

    # ---- routing --------------------------------------------------------
    def _dispatch(self):
        try:
            raw_path = self.path
            path = raw_path.split("?", 1)[0]
            idx = path.find("/_mock/")
            if idx >= 0 or path.endswith("/_mock"):
                self._control(path[idx:] if idx >= 0 else "/_mock/", raw_path)
                return
            p = path.rstrip("/")
            if p.endswith("/chat/completions"):
                self._provider("openai")
            elif p.endswith("/messages"):
                self._provider("anthropic")
            elif p.endswith("/embeddings"):
                self._provider("embeddings")
            elif p.endswith("/webhook") and self.command == "POST":
                self._webhook(raw_path)
            else:
                self._read_body_quiet()
                self._send(404, openai_error(
                    404, "Invalid URL (%s %s)" % (self.command, path),
                    etype="invalid_request_error"))
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
        except Exception as e:          # a bug in the mock: say so loudly
            traceback.print_exc()
            self.close_connection = True
            try:
                self._send(500, _dumps({"error": {
                    "message": "mock_llm internal error: %r" % (e,),
                    "type": "mock_error", "param": None, "code": None}}))
            except OSError:
                pass

    def _read_body_quiet(self):
        try:
            return self._read_body()
        except ValueError:
            self.close_connection = True
            return b""

    # ---- alert webhook --------------------------------------------------
    def _webhook(self, raw_path):
        """Record an alert payload; ?status=N answers N instead of 200."""
        raw = self._read_body_quiet()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(raw_path).query)
        status = int(query.get("status", ["200"])[0])
        try:
            body = json.loads(raw.decode("utf-8"))
        except ValueError:
            body = raw.decode("utf-8", "replace")
        with STATE.lock:
            STATE.webhooks.append({"status": status, "body": body,
                                   "content_type": self.headers.get("Content-Type")})
        self._json(status, {"ok": status < 300})

    # ---- control API ----------------------------------------------------
    def _control(self, path, raw_path):
        method = self.command
        raw = self._read_body_quiet()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(raw_path).query)
        st = STATE
        if path == "/_mock/health" and method == "GET":
            return self._json(200, {"ok": True})
        if path == "/_mock/models" and method == "GET":
            return self._json(200, {"models": st.list_profiles()})
        if path.startswith("/_mock/models/"):
            mid = urllib.parse.unquote(path[len("/_mock/models/"):])
            if not mid:
                return self._json(400, {"ok": False, "error": "empty model id"})
            if method == "PUT":
                try:
                    profile = validate_profile(json.loads(raw or b"{}"))
                except (ValueError, ProfileError) as e:
                    return self._json(400, {"ok": False, "error": str(e)})
                st.set_profile(mid, profile)
                return self._json(200, {"ok": True, "model": mid, "profile": profile})
            if method == "GET":
                prof = st.list_profiles().get(mid)
                if prof is None:
                    return self._json(404, {"ok": False, "error": "no such profile"})
                return self._json(200, prof)
            if method == "DELETE":
                if st.delete_profile(mid):
                    return self._json(200, {"ok": True, "model": mid})
                return self._json(404, {"ok": False, "error": "no such profile"})
        if path == "/_mock/requests":
            if method == "GET":
                model = query.get("model", [None])[0]
                limit = query.get("limit", [None])[0]
                try:
                    limit = int(limit) if limit is not None else None
                except ValueError:
                    return self._json(400, {"ok": False, "error": "bad limit"})
                return self._json(200, st.get_requests(model, limit))
            if method == "DELETE":
                return self._json(200, {"ok": True, "cleared": st.clear_requests()})
        if path == "/_mock/webhooks" and method == "GET":
            with st.lock:
                return self._json(200, list(st.webhooks))
        if path == "/_mock/stats" and method == "GET":
            return self._json(200, st.get_stats())
        if path == "/_mock/reset" and method == "POST":
            st.reset()
            return self._json(200, {"ok": True})
        return self._json(404, {"ok": False,
                                "error": "unknown control endpoint %s %s" % (method, path)})

    # ---- provider endpoints --------------------------------------------
    def _provider(self, kind):
        try:
            raw = self._read_body()
        except ValueError:
            self.close_connection = True
            raw = b""
        body = None
        parsed_ok = False
        try:
            body = json.loads(raw)
            parsed_ok = True
        except ValueError:
            pass
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str):
            model = None
        entry = STATE.lookup(model)

        record = None
        if STATE.log.maxlen:
            headers = {}
            auth_present = False
            for k, v in self.headers.items():
                k = k.lower()
                if k in ("authorization", "x-api-key"):
                    if v.strip():
                        auth_present = True
                    v = _redact(v)
                headers[k] = v
            record = {"seq": 0, "ts": time.time(), "path": self.path,
                      "method": self.command, "model": model,
                      "headers": headers, "auth_present": auth_present,
                      "body": body if parsed_ok else raw.decode("utf-8", "replace"),
                      "status": None}
        stat_key = model if model is not None else "(none)"
        STATE.begin(stat_key, record)
        status = None
        try:
            status = self._provider_inner(kind, raw, body, parsed_ok, model, entry)
        finally:
            STATE.end(stat_key, status, record)

    def _provider_inner(self, kind, raw, body, parsed_ok, model, entry):
        """Handle one provider request; return the status sent (or "hang")."""
        profile = entry.profile
        anthropic = kind == "anthropic"
        if self.command != "POST":
            return self._error(kind, 405, "Method %s not allowed" % self.command)

        # ---- auth (checked first, like the real services) ---------------
        want = profile.get("api_key")
        if anthropic:
            key = self.headers.get("x-api-key", "").strip()
            if not key:
                return self._error(kind, 401, "x-api-key header is required")
            if want is not None and key != want:
                return self._error(kind, 401, "invalid x-api-key")
            if not self.headers.get("anthropic-version", "").strip():
                return self._error(kind, 400, "anthropic-version: header is required")
        else:
            auth = self.headers.get("Authorization", "").strip()
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not key:
                return self._error(kind, 401, OPENAI_NO_KEY)
            if want is not None and key != want:
                return self._send_status(401, openai_error(401))

        # ---- validation ---------------------------------------------------
        if not parsed_ok:
            if anthropic:
                return self._error(kind, 400, "There was an error parsing the "
                                   "body of your request: invalid JSON")
            return self._error(kind, 400, OPENAI_BAD_JSON)
        try:
            if kind == "openai":
                parts, last_user, max_tokens, chat_extra = validate_openai_chat(body)
            elif anthropic:
                parts, last_user, max_tokens, chat_extra = validate_anthropic(body)
            else:
                inputs, dims, fmt = validate_embeddings(body)
                parts = inputs
        except BadRequest as e:
            return self._error(kind, 400, e.message, e.param)

        prompt_text = "\n".join(parts)
        prompt_tokens = len(prompt_text.split())
        dec = Decider(STATE.seed, model, prompt_text)
        extra = list(profile["headers"].items()) if "headers" in profile else []

        # ---- faults that replace the answer --------------------------------
        if profile.get("hang"):
            self._hang()
            return "hang"
        delay = profile.get("latency_ms", 0)
        jit = profile.get("latency_jitter_ms", 0)
        if jit:
            delay += dec.unit("latency_jitter") * jit
        if delay > 0:
            time.sleep(delay / 1000.0)
        if "status" in profile:
            b = profile.get("body", "")
            if not isinstance(b, str):
                b = json.dumps(b)
            ctype = JSON_CT if b[:1] in ("{", "[") else "text/plain; charset=utf-8"
            return self._send_status(profile["status"], b.encode(), ctype, extra)
        if "fuzz_seed" in profile and kind != "embeddings":
            st, out, names = fuzz_response(profile["fuzz_seed"], prompt_text,
                                           model, anthropic, prompt_tokens)
            return self._send_status(st, out, JSON_CT,
                                     extra + [("X-Mock-Fuzz", ",".join(names))])
        ra = profile.get("retry_after")
        ra_hdr = [("Retry-After", _fmt_num(ra))] if ra is not None else []
        ffn = profile.get("fail_first_n", 0)
        if ffn and STATE.next_count(entry, model) < ffn:
            st = profile.get("fail_status", 503)
            return self._error(kind, st, extra=extra + ra_hdr)
        rl = profile.get("rate_limit_rate", 0)
        if rl and dec.unit("rate_limit") < rl:
            hdr = ra_hdr if "retry_after" in profile else [("Retry-After", "1")]
            return self._error(kind, 429, extra=extra + hdr)
        er = profile.get("error_rate", 0)
        if er and dec.unit("error") < er:
            return self._error(kind, profile.get("error_status", 500),
                               extra=extra + ra_hdr)

        # ---- the answer ----------------------------------------------------
        malformed = profile.get("malformed")
        if kind == "embeddings":
            obj = self._embeddings_body(model, profile, inputs, dims, fmt,
                                        prompt_tokens, malformed)
        else:
            ans = build_chat_answer(profile, dec, last_user, max_tokens, chat_extra)
            if anthropic:
                obj = anthropic_body(model, ans, prompt_tokens, profile, malformed)
            else:
                obj = openai_chat_body(model, ans, prompt_tokens, malformed)
        out = _dumps(obj)
        ctype = JSON_CT
        if malformed:
            if malformed == "html":
                out = (b"<html><head><title>502 Bad Gateway</title></head><body>"
                       b"<h1>502 Bad Gateway</h1></body></html>")
                ctype = "text/html"
            elif malformed == "empty":
                out = b""
            elif malformed == "truncated_json":
                out = out[:len(out) // 2]
            elif malformed == "not_json":
                out = b"this is not json"
            elif malformed == "invalid_utf8":
                mark = json.dumps(INVALID_UTF8_MARK)[1:-1].encode()
                out = out.replace(mark, b"caf\xc3 \xff\xfe invalid")
        return self._deliver(200, out, ctype, extra, profile)

    def _embeddings_body(self, model, profile, inputs, dims, fmt, ptoks, malformed):
        dim = dims or profile.get("embedding_dim", DEFAULT_EMBEDDING_DIM)
        data = []
        for i, text in enumerate(inputs):
            vec = embed(text, dim)
            if fmt == "base64":
                vec = base64.b64encode(struct.pack("<%df" % dim, *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        if malformed == "no_fields":
            return {"object": "list", "model": model}
        if malformed == "content_null":
            data = None
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": ptoks, "total_tokens": ptoks}}

    # ---- response helpers -------------------------------------------------
    def _send_status(self, status, body, ctype=JSON_CT, extra=None):
        self._send(status, body, ctype, extra)
        return status

    def _error(self, kind, status, message=None, param=None, extra=None):
        if kind == "anthropic":
            body = anthropic_error(status, message)
        elif message is None:
            body = openai_error(status)
        else:
            body = openai_error(status, message, param)
        return self._send_status(status, body, JSON_CT, extra)

    def _deliver(self, status, body, ctype, extra, profile):
        """Send a 200 answer, applying delivery faults from the profile."""
        if profile.get("reset"):
            self.close_connection = True
            self.wfile.write(self._head(status, len(body), ctype, extra)
                             + body[:len(body) // 2])
            time.sleep(0.05)          # let the half body reach the client
            sock = self.connection
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack("ii", 1, 0))
            self.rfile.close()        # drop makefile refs so close is real
            sock.close()              # linger 0 -> RST
            return status
        if profile.get("truncate"):
            self.close_connection = True
            self.wfile.write(self._head(status, len(body), ctype, extra)
                             + body[:len(body) // 2])
            return status
        drip = profile.get("slow_drip_ms", 0)
        if drip:
            self.wfile.write(self._head(status, len(body), ctype, extra))
            step = drip / 1000.0
            for i in range(len(body)):
                if SHUTDOWN.is_set():
                    self.close_connection = True
                    break
                time.sleep(step)
                self.wfile.write(body[i:i + 1])
            return status
        self._send(status, body, ctype, extra)
        return status

    def _hang(self):
        """Never answer: wait until the client goes away (or 300 s)."""
        self.close_connection = True
        sock = self.connection
        poller = select.poll()
        poller.register(sock, select.POLLIN | select.POLLHUP | select.POLLERR)
        deadline = time.monotonic() + HANG_MAX_S
        while not SHUTDOWN.is_set() and time.monotonic() < deadline:
            events = poller.poll(250)
            if not events:
                continue
            try:
                data = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                break
            if not data:
                break                    # client closed
            time.sleep(0.25)             # client sent more; keep ignoring it


# --------------------------------------------------------------------------
# Server and main
# --------------------------------------------------------------------------

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # connection-level errors (client went away) are routine here
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return
        super().handle_error(request, client_address)


class _Stop(Exception):
    pass


def _on_signal(signum, frame):
    raise _Stop()


def load_config(path):
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise ProfileError("config must be a JSON object {model: profile}")
    for k, v in cfg.items():
        try:
            validate_profile(v)
        except ProfileError as e:
            raise ProfileError("config profile %r: %s" % (k, e)) from None
    return cfg


def write_port_file(path, port):
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, ".%s.tmp.%d" % (os.path.basename(path), os.getpid()))
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.replace(tmp, path)


def main(argv=None):
    global STATE, VERBOSE
    ap = argparse.ArgumentParser(description="Mock OpenAI/Anthropic LLM server "
                                 "(binds 127.0.0.1 only).")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--seed", default="0")
    ap.add_argument("--config")
    ap.add_argument("--log-requests", type=int, default=10000)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    VERBOSE = args.verbose
    base = {}
    if args.config:
        try:
            base = load_config(args.config)
        except (OSError, ValueError, ProfileError) as e:
            sys.stderr.write("mock_llm: bad --config: %s\n" % e)
            return 2
    STATE = State(args.seed, base, max(0, args.log_requests))

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    server = Server((HOST, args.port), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever,
                              kwargs={"poll_interval": 0.2},
                              name="mock_llm-serve", daemon=True)
    try:
        thread.start()
        if args.port_file:
            write_port_file(args.port_file, port)
        sys.stderr.write("mock_llm listening on %s:%d\n" % (HOST, port))
        sys.stderr.flush()
        while thread.is_alive():
            time.sleep(1.0)
    except _Stop:
        pass
    finally:
        SHUTDOWN.set()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
