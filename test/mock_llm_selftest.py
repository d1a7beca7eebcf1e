#!/usr/bin/env python3
"""
mock_llm_selftest.py - self-test for test/mock_llm.py.

Starts the mock on port 0 in a subprocess (twice, to check that seeded
decisions are identical across runs), exercises both providers, the
validation errors, determinism, every fault mode, embeddings, the request
log and the control API, then stops the server with SIGTERM.

Standard library only (http.client / socket / urllib). Bounded in time
(well under 30 s). Prints one line per check and ends with exactly
"N passed, N failed"; exits 1 on any failure.

    python3 test/mock_llm_selftest.py
"""

import base64
import http.client
import json
import re
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MOCK = os.path.join(HERE, "mock_llm.py")
SEED = "42"

PASSED = 0
FAILED = 0


def check(name, cond, detail=""):
    """Record and print one check."""
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print("ok   %s" % name)
    else:
        FAILED += 1
        print("FAIL %s %s" % (name, detail))
    sys.stdout.flush()
    return cond


# --------------------------------------------------------------------------
# Server process management
# --------------------------------------------------------------------------

class MockServer:
    def __init__(self, tmpdir, tag, extra_args=()):
        self.port_file = os.path.join(tmpdir, "port-%s.txt" % tag)
        self.err_path = os.path.join(tmpdir, "stderr-%s.txt" % tag)
        self.err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, MOCK, "--port", "0", "--port-file", self.port_file,
             "--seed", SEED] + list(extra_args),
            stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = time.monotonic() + 10
        self.port = None
        while time.monotonic() < deadline:
            if os.path.exists(self.port_file):
                with open(self.port_file) as f:
                    txt = f.read()
                if txt.endswith("\n"):
                    self.port = int(txt)
                    break
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if self.port is None:
            self.stop()
            raise RuntimeError("mock did not start: %s" % self.stderr())

    def stderr(self):
        if not self.err.closed:
            self.err.flush()
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        """SIGTERM; return the exit code (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.err.close()
                return None
        self.err.close()
        return self.proc.returncode


# --------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------

class Client:
    """A keep-alive HTTP client that reconnects after failures."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None, timeout=5.0):
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=timeout)
            self.conn.timeout = timeout
            if self.conn.sock is not None:
                self.conn.sock.settimeout(timeout)
            try:
                self.conn.request(method, path, body=body, headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                return resp.status, resp, data
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError):
                self.close()
                if attempt:             # a stale keep-alive socket gets one retry
                    raise
            except Exception:
                self.close()
                raise

    def json(self, method, path, body=None, headers=None, timeout=5.0):
        st, resp, data = self.request(method, path, body, headers, timeout)
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        return st, resp, obj

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


OA = {"Authorization": "Bearer sk-selftest-123"}
AN = {"x-api-key": "ak-selftest-456", "anthropic-version": "2023-06-01"}


def oa_chat(c, model, prompt, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    body.update(kw)
    return c.json("POST", "/v1/chat/completions", body, OA)


def an_msg(c, model, prompt, **kw):
    body = {"model": model, "max_tokens": 1000,
            "messages": [{"role": "user", "content": prompt}]}
    body.update(kw)
    return c.json("POST", "/v1/messages", body, AN)


def put_profile(c, model, profile):
    st, _, obj = c.json("PUT", "/_mock/models/" + model, profile)
    if st != 200:
        raise RuntimeError("PUT profile %s failed: %s" % (model, obj))


def raw_exchange(port, request_bytes, timeout=3.0):
    """Send raw bytes; read until close / error. Return (data, exception)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    data = b""
    exc = None
    try:
        s.sendall(request_bytes)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        exc = e
    finally:
        s.close()
    return data, exc


def raw_post(path, body, headers):
    body = json.dumps(body).encode()
    lines = ["POST %s HTTP/1.1" % path, "Host: 127.0.0.1",
             "Content-Type: application/json",
             "Content-Length: %d" % len(body)]
    lines += ["%s: %s" % kv for kv in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / (
        math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


# --------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------

def refusal_count(c):
    """refusal_rate 0.5 over 200 distinct prompts -> number of refusals."""
    put_profile(c, "refuser", {"refusal_rate": 0.5})
    n = 0
    for i in range(200):
        st, _, obj = oa_chat(c, "refuser", "question number %d about billing" % i)
        if st == 200 and obj["choices"][0]["message"]["content"] == "I cannot help with that.":
            n += 1
    return n


def test_basics(c, port):
    st, _, obj = c.json("GET", "/_mock/health")
    check("health", st == 200 and obj == {"ok": True}, obj)

    # ---- OpenAI happy path
    st, resp, obj = oa_chat(c, "gpt-test", "hello there my friend",
                            max_tokens=100, temperature=0.5)
    ok = (st == 200 and obj["object"] == "chat.completion"
          and obj["id"].startswith("chatcmpl-") and obj["model"] == "gpt-test"
          and isinstance(obj["created"], int)
          and obj["choices"][0]["message"]["role"] == "assistant"
          and obj["choices"][0]["message"]["refusal"] is None
          and obj["choices"][0]["finish_reason"] == "stop"
          and obj["choices"][0]["message"]["content"].startswith("Thanks for reaching out.")
          and resp.getheader("Content-Type") == "application/json")
    check("openai happy path", ok, obj)
    text = obj["choices"][0]["message"]["content"] if ok else ""
    u = obj.get("usage", {}) if obj else {}
    check("openai usage counts", u == {"prompt_tokens": 4, "completion_tokens": 30,
                                       "total_tokens": 34}, u)
    st2, _, obj2 = oa_chat(c, "gpt-test", "hello there my friend")
    check("determinism: same prompt twice -> same text",
          st2 == 200 and obj2["choices"][0]["message"]["content"] == text)
    st3, _, obj3 = oa_chat(c, "gpt-other", "hello there my friend")
    check("determinism: same prompt, other model with same profile -> same text",
          st3 == 200 and obj3["choices"][0]["message"]["content"] == text)
    st4, _, obj4 = oa_chat(c, "gpt-test", "a different prompt")
    check("different prompt -> different text",
          st4 == 200 and obj4["choices"][0]["message"]["content"] != text)
    # base-url prefix independence + multi-message prompt token count
    st, _, obj = c.json("POST", "/openai/v1/chat/completions", {
        "model": "gpt-test", "max_completion_tokens": 50,
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "developer", "content": "x"},
                     {"role": "assistant", "content": "earlier answer here"},
                     {"role": "user", "content": "  two words  "}]}, OA)
    check("openai prefix path + prompt tokens over all messages",
          st == 200 and obj["usage"]["prompt_tokens"] == 8, obj)

    # ---- Anthropic happy path (+ thinking block)
    put_profile(c, "claude-think", {"thinking_block": True})
    st, _, obj = an_msg(c, "claude-think", "hello there my friend",
                        system="you are helpful")
    ok = (st == 200 and obj["type"] == "message" and obj["id"].startswith("msg_")
          and obj["role"] == "assistant" and obj["stop_reason"] == "end_turn"
          and obj["stop_sequence"] is None
          and [b["type"] for b in obj["content"]] == ["thinking", "text"]
          and obj["content"][1]["text"].startswith("Thanks for reaching out."))
    check("anthropic happy path with thinking block first", ok, obj)
    check("anthropic usage counts",
          ok and obj["usage"] == {"input_tokens": 7, "output_tokens": 30}, obj)
    st, _, obj = c.json("POST", "/v1/messages", {
        "model": "claude-x", "max_tokens": 1000,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hello there"},
            {"type": "text", "text": "my friend"}]}]}, AN)
    check("anthropic content blocks accepted",
          st == 200 and obj["content"][0]["type"] == "text"
          and obj["usage"]["input_tokens"] == 4, obj)

    # ---- validation and auth errors
    st, _, obj = c.json("POST", "/v1/messages", {
        "model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}, AN)
    check("anthropic without max_tokens -> 400",
          st == 400 and obj == {"type": "error", "error": {
              "type": "invalid_request_error",
              "message": "max_tokens: Field required"}}, (st, obj))
    st, _, obj = c.json("POST", "/v1/messages", {
        "model": "claude-x", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]},
        {"anthropic-version": "2023-06-01"})
    check("anthropic without x-api-key -> 401",
          st == 401 and obj["type"] == "error"
          and obj["error"]["type"] == "authentication_error", (st, obj))
    st, _, obj = c.json("POST", "/v1/messages", {
        "model": "claude-x", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]}, {"x-api-key": "k"})
    check("anthropic without anthropic-version -> 400", st == 400, (st, obj))
    st, _, obj = an_msg(c, "claude-x", "hi", temperature=1.5)
    check("anthropic temperature > 1 -> 400", st == 400, (st, obj))
    st, _, obj = c.json("POST", "/v1/chat/completions", {
        "model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})
    check("openai without Authorization -> 401",
          st == 401 and obj["error"]["type"] == "invalid_request_error", (st, obj))
    put_profile(c, "gpt-keyed", {"api_key": "sk-right"})
    st, _, obj = oa_chat(c, "gpt-keyed", "hi")
    check("openai wrong api_key -> 401 invalid_api_key",
          st == 401 and obj == {"error": {"message": "Incorrect API key provided",
                                          "type": "invalid_request_error",
                                          "param": None, "code": "invalid_api_key"}},
          (st, obj))
    st, _, obj = c.json("POST", "/v1/chat/completions", {
        "model": "gpt-keyed", "messages": [{"role": "user", "content": "hi"}]},
        {"Authorization": "Bearer sk-right"})
    check("openai matching api_key -> 200", st == 200, (st, obj))
    st, _, obj = oa_chat(c, "gpt-test", "hi", max_tokens=5, max_completion_tokens=5)
    check("openai max_tokens + max_completion_tokens -> 400",
          st == 400 and obj["error"]["type"] == "invalid_request_error"
          and obj["error"]["code"] is None, (st, obj))
    st, _, obj = c.json("POST", "/v1/chat/completions", {
        "model": "gpt-test", "messages": [{"role": "robot", "content": "hi"}]}, OA)
    check("openai bad role -> 400 param messages[0].role",
          st == 400 and obj["error"]["param"] == "messages[0].role", (st, obj))
    st, _, obj = oa_chat(c, "gpt-test", "hi", temperature=3)
    check("openai temperature 3 -> 400", st == 400, (st, obj))
    st, _, obj = c.json("POST", "/v1/chat/completions", {"model": "gpt-test",
                                                         "messages": []}, OA)
    check("openai empty messages -> 400", st == 400, (st, obj))
    st, _, data = c.request("POST", "/v1/chat/completions", b"{not json", OA)
    check("openai invalid JSON -> 400", st == 400)

    # ---- max_tokens cut, echo, fixed_text
    st, _, obj = oa_chat(c, "gpt-test", "hello", max_tokens=3)
    check("max_tokens cuts answer -> finish_reason length",
          st == 200 and obj["choices"][0]["finish_reason"] == "length"
          and obj["usage"]["completion_tokens"] == 3, obj)
    put_profile(c, "echoer", {"echo": True})
    st, _, obj = oa_chat(c, "echoer", "Repeat  exactly this, please!")
    check("echo profile",
          st == 200 and obj["choices"][0]["message"]["content"]
          == "Repeat  exactly this, please!", obj)
    put_profile(c, "fixed", {"fixed_text": "Exactly four words here."})
    st, _, obj = an_msg(c, "fixed", "anything")
    check("fixed_text profile (anthropic)",
          st == 200 and obj["content"][0]["text"] == "Exactly four words here."
          and obj["usage"]["output_tokens"] == 4, obj)

    # ---- refusal modes
    put_profile(c, "ref-signal", {"refusal_rate": 1, "refusal_mode": "signal"})
    st, _, obj = oa_chat(c, "ref-signal", "hi")
    m = obj["choices"][0] if st == 200 else {}
    check("refusal signal (openai)",
          st == 200 and m["message"]["content"] is None
          and m["message"]["refusal"] == "I can't assist with that request."
          and m["finish_reason"] == "stop", obj)
    st, _, obj = an_msg(c, "ref-signal", "hi")
    check("refusal signal (anthropic)",
          st == 200 and obj["stop_reason"] == "refusal"
          and obj["content"][0]["type"] == "text", obj)
    put_profile(c, "ref-cf", {"refusal_rate": 1, "refusal_mode": "content_filter"})
    st, _, obj = oa_chat(c, "ref-cf", "hi")
    check("refusal content_filter (openai)",
          st == 200 and obj["choices"][0]["finish_reason"] == "content_filter"
          and obj["choices"][0]["message"]["content"] is None, obj)


def test_openings(c):
    put_profile(c, "opener", {"openings": [
        ["Thank you for contacting support.", 84], ["Hi there!", 16]]})
    n_thank = n_hi = 0
    for i in range(300):
        st, _, obj = oa_chat(c, "opener", "opening test prompt %d" % i)
        t = obj["choices"][0]["message"]["content"] if st == 200 else ""
        if t.startswith("Thank you for contacting support."):
            n_thank += 1
        elif t.startswith("Hi there!"):
            n_hi += 1
    check("openings weights 84/16 (got %d/%d of 300)" % (n_thank, n_hi),
          n_thank + n_hi == 300 and 0.76 <= n_thank / 300 <= 0.92)


def test_faults(c, port):
    # ---- fail_first_n with Retry-After
    put_profile(c, "flaky", {"fail_first_n": 2, "retry_after": 0.2})
    res = []
    for _ in range(3):
        st, resp, obj = oa_chat(c, "flaky", "retry me")
        res.append((st, resp.getheader("Retry-After")))
    check("fail_first_n=2 -> 503, 503, 200",
          [r[0] for r in res] == [503, 503, 200] and res[0][1] == "0.2", res)
    put_profile(c, "flaky", {"fail_first_n": 1, "fail_status": 500})
    st1, _, _ = an_msg(c, "flaky", "again")
    st2, _, _ = an_msg(c, "flaky", "again")
    check("PUT resets fail_first_n counter", (st1, st2) == (500, 200), (st1, st2))

    # ---- 429 with Retry-After (both providers)
    put_profile(c, "limited", {"rate_limit_rate": 1, "retry_after": 0.2})
    st, resp, obj = oa_chat(c, "limited", "x")
    check("openai 429 with Retry-After: 0.2",
          st == 429 and resp.getheader("Retry-After") == "0.2"
          and obj["error"]["code"] == "rate_limit_exceeded", (st, obj))
    st, resp, obj = an_msg(c, "limited", "x")
    check("anthropic 429 rate_limit_error",
          st == 429 and resp.getheader("Retry-After") == "0.2"
          and obj["error"]["type"] == "rate_limit_error", (st, obj))
    put_profile(c, "limited", {"rate_limit_rate": 1, "retry_after": None})
    st, resp, obj = oa_chat(c, "limited", "x")
    check("429 with retry_after null -> no header",
          st == 429 and resp.getheader("Retry-After") is None, st)

    # ---- error_rate, anthropic 529
    put_profile(c, "overloaded", {"error_rate": 1, "error_status": 529})
    st, _, obj = an_msg(c, "overloaded", "x")
    check("anthropic 529 overloaded_error",
          st == 529 and obj["error"]["type"] == "overloaded_error", (st, obj))
    put_profile(c, "broken", {"error_rate": 1})
    st, _, obj = oa_chat(c, "broken", "x")
    check("openai 500 server_error",
          st == 500 and obj["error"]["type"] == "server_error", (st, obj))

    # ---- raw status/body and latency
    put_profile(c, "raw", {"status": 418, "body": "teapot"})
    st, _, data = c.request("POST", "/v1/chat/completions",
                            {"model": "raw", "messages": [{"role": "user", "content": "x"}]}, OA)
    check("raw status/body", st == 418 and data == b"teapot", (st, data))
    put_profile(c, "slow", {"latency_ms": 150})
    t0 = time.monotonic()
    st, _, _ = oa_chat(c, "slow", "x")
    dt = time.monotonic() - t0
    check("latency_ms 150 (%.0f ms)" % (dt * 1000), st == 200 and 0.14 <= dt < 1.5)

    # ---- hang: the client times out
    put_profile(c, "hanger", {"hang": True})
    hc = Client(port)
    t0 = time.monotonic()
    try:
        hc.json("POST", "/v1/chat/completions",
                {"model": "hanger", "messages": [{"role": "user", "content": "x"}]},
                OA, timeout=0.5)
        hung = False
    except (socket.timeout, TimeoutError):
        hung = True
    dt = time.monotonic() - t0
    hc.close()
    check("hang -> client timeout after 0.5 s", hung and 0.45 <= dt < 2, dt)

    # ---- slow drip
    put_profile(c, "dripper", {"slow_drip_ms": 2, "fixed_text": "drip"})
    t0 = time.monotonic()
    st, _, obj = oa_chat(c, "dripper", "x")
    dt = time.monotonic() - t0
    size = len(json.dumps(obj, separators=(",", ":"))) if obj else 0
    check("slow drip: valid body, took %.2f s for %d bytes" % (dt, size),
          st == 200 and obj["choices"][0]["message"]["content"] == "drip"
          and dt >= size * 0.002 * 0.9, obj)

    # ---- truncate: Content-Length promises more than is sent
    put_profile(c, "trunc", {"truncate": True})
    try:
        oa_chat(c, "trunc", "x")
        got = "no error"
    except http.client.IncompleteRead as e:
        got = "incomplete"
    except Exception as e:
        got = repr(e)
    c.close()
    check("truncate -> IncompleteRead", got == "incomplete", got)

    # ---- reset: half a body then RST
    put_profile(c, "resetter", {"reset": True})
    data, exc = raw_exchange(port, raw_post("/v1/chat/completions", {
        "model": "resetter", "messages": [{"role": "user", "content": "x"}]}, OA))
    head, _, body = data.partition(b"\r\n\r\n")
    clen = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            clen = int(line.split(b":")[1])
    check("reset -> ECONNRESET after a partial body",
          isinstance(exc, ConnectionResetError) and 0 < len(body) < clen,
          (exc, len(body), clen))

    # ---- oversize
    put_profile(c, "big", {"oversize_bytes": 200000})
    st, _, obj = oa_chat(c, "big", "x", max_tokens=5)
    text = obj["choices"][0]["message"]["content"] if st == 200 else ""
    check("oversize_bytes 200000 -> text of exactly 200000 bytes",
          len(text.encode()) == 200000, len(text))

    # ---- malformed bodies
    expect = {"html": lambda d: d.startswith(b"<html>"),
              "empty": lambda d: d == b"",
              "not_json": lambda d: d == b"this is not json",
              "truncated_json": lambda d: d.startswith(b"{") and not _parses(d),
              "invalid_utf8": lambda d: _parses_bytes_not_utf8(d),
              "no_fields": lambda d: _parses(d) and "choices" not in json.loads(d),
              "content_null": lambda d: _parses(d) and
              json.loads(d)["choices"][0]["message"]["content"] is None}
    for kind, pred in expect.items():
        put_profile(c, "mal", {"malformed": kind})
        st, _, data = c.request("POST", "/v1/chat/completions", {
            "model": "mal", "messages": [{"role": "user", "content": "x"}]}, OA)
        check("malformed %s" % kind, st == 200 and pred(data), data[:80])


def test_fuzz(c):
    """fuzz_seed: deterministic per prompt, varied across prompts."""
    put_profile(c, "fz", {"fuzz_seed": 7})
    seen = {}
    statuses = set()
    kinds = set()
    same = True
    for i in range(60):
        req = {"model": "fz", "messages": [{"role": "user", "content": "fuzz %d" % i}]}
        st, hdr, data = c.request("POST", "/v1/chat/completions", req, OA)
        st2, _, data2 = c.request("POST", "/v1/chat/completions", req, OA)
        same = same and st == st2 and data == data2
        statuses.add(st)
        seen[data] = True
        kinds.update(k.rstrip("0123456789") for k in
                     (hdr.getheader("X-Mock-Fuzz") or "").split(","))
    check("fuzz_seed: same prompt, same status and bytes", same)
    check("fuzz_seed: 60 prompts give %d distinct bodies, %d statuses" % (len(seen), len(statuses)),
          len(seen) >= 40 and 200 in statuses and len(statuses) >= 4, sorted(statuses))
    check("fuzz_seed: many kinds of mutation (%s)" % ",".join(sorted(kinds)), len(kinds) >= 8)
    st, _, data = c.request("POST", "/v1/messages", {
        "model": "fz", "max_tokens": 10,
        "messages": [{"role": "user", "content": "fuzz 1"}]}, AN)
    check("fuzz_seed: Anthropic dialect too", st >= 200)
    bad = c.json("PUT", "/_mock/models/fz", {"fuzz_seed": -1})[0]
    check("fuzz_seed: a negative seed is rejected", bad == 400, bad)


def _parses(d):
    try:
        json.loads(d)
        return True
    except ValueError:
        return False


def _parses_bytes_not_utf8(d):
    try:
        d.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_embeddings(c):
    inputs = ["the refund for my order", "the refund for my order",
              "refund for my order please", "quantum chromodynamics lecture notes"]
    st, _, obj = c.json("POST", "/v1/embeddings",
                        {"model": "emb", "input": inputs}, OA)
    ok = (st == 200 and obj["object"] == "list" and len(obj["data"]) == 4
          and all(len(d["embedding"]) == 64 for d in obj["data"])
          and [d["index"] for d in obj["data"]] == [0, 1, 2, 3]
          and obj["usage"] == {"prompt_tokens": 19, "total_tokens": 19})
    check("embeddings shape, dim 64, usage", ok, obj)
    if ok:
        v = [d["embedding"] for d in obj["data"]]
        same, near, far = cosine(v[0], v[1]), cosine(v[0], v[2]), cosine(v[0], v[3])
        check("embeddings cosine identical=%.3f shared=%.3f unrelated=%.3f"
              % (same, near, far),
              abs(same - 1) < 1e-9 and near > 0.6 and near > far)
    st, _, obj = c.json("POST", "/v1/embeddings", {
        "model": "emb", "input": "hi", "dimensions": 8,
        "encoding_format": "base64"}, OA)
    ok = st == 200
    if ok:
        vec = struct.unpack("<8f", base64.b64decode(obj["data"][0]["embedding"]))
        ok = abs(sum(x * x for x in vec) - 1) < 1e-5
    check("embeddings base64 + dimensions", ok, obj)


def test_log_and_control(c):
    c.json("DELETE", "/_mock/requests")
    oa_chat(c, "logged", "log me")
    an_msg(c, "logged", "log me too")
    st, _, reqs = c.json("GET", "/_mock/requests?model=logged&limit=5")
    ok = st == 200 and isinstance(reqs, list) and len(reqs) == 2
    check("request log filtered by model", ok, reqs)
    if ok:
        a, b = reqs
        check("request log redacts authorization",
              a["headers"]["authorization"] == "Bear..." and a["auth_present"] is True
              and "sk-selftest" not in json.dumps(a), a["headers"])
        check("request log redacts x-api-key",
              b["headers"]["x-api-key"] == "ak-s..." and b["auth_present"] is True
              and "ak-selftest" not in json.dumps(b), b["headers"])
        check("request log has body, path, method, ts, most recent last",
              a["body"]["messages"][0]["content"] == "log me"
              and a["path"] == "/v1/chat/completions" and a["method"] == "POST"
              and a["ts"] <= b["ts"] and b["path"] == "/v1/messages", reqs)
    st, _, reqs = c.json("GET", "/_mock/requests?limit=1")
    check("request log limit", st == 200 and len(reqs) == 1
          and reqs[0]["path"] == "/v1/messages", reqs)

    st, _, stats = c.json("GET", "/_mock/stats")
    s = stats["models"].get("logged", {}) if st == 200 else {}
    check("stats per model", s.get("requests") == 2
          and s.get("by_status") == {"200": 2} and s.get("in_flight") == 0, s)

    st, _, obj = c.json("PUT", "/_mock/models/x", {"latncy_ms": 5})
    check("PUT with unknown field -> 400", st == 400, obj)
    st, _, obj = c.json("GET", "/_mock/models")
    check("GET models lists profiles", st == 200 and "opener" in obj["models"])
    st, _, _ = c.json("DELETE", "/_mock/models/opener")
    st2, _, obj = c.json("GET", "/_mock/models")
    check("DELETE model", st == 200 and "opener" not in obj["models"])
    st, _, _ = c.json("POST", "/_mock/reset")
    st2, _, models = c.json("GET", "/_mock/models")
    st3, _, reqs = c.json("GET", "/_mock/requests")
    st4, _, stats = c.json("GET", "/_mock/stats")
    check("reset clears profiles, log, stats",
          st == 200 and models["models"] == {} and reqs == []
          and stats["total"]["requests"] == 0, (models, len(reqs), stats))


def test_concurrency(port):
    """100 concurrent keep-alive clients x 10 requests each."""
    errors = []
    texts = set()
    lock = threading.Lock()

    def worker(k):
        cl = Client(port)
        try:
            for i in range(10):
                st, _, obj = oa_chat(cl, "conc", "same prompt for all")
                if st != 200:
                    errors.append(st)
                else:
                    with lock:
                        texts.add(obj["choices"][0]["message"]["content"])
        except Exception as e:
            errors.append(repr(e))
        finally:
            cl.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    dt = time.monotonic() - t0
    check("100 concurrent clients x 10 requests (%.0f req/s)" % (1000 / dt),
          not errors and len(texts) == 1, errors[:5])


def test_tools(c):
    """Strict validation of tool blocks in both dialects, and tool-call answers."""
    put_profile(c, "tooler", {"fixed_text": "Sunny.",
                              "tool_call": {"name": "weather", "arguments": {"city": "Oslo"}}})
    otools = [{"type": "function", "function": {"name": "weather",
                                                "parameters": {"type": "object"}}}]
    atools = [{"name": "weather", "input_schema": {"type": "object"}}]

    # ---- OpenAI: a tool call, then the conversation with its result
    st, _, obj = oa_chat(c, "tooler", "weather?", tools=otools)
    msg = obj["choices"][0]["message"] if st == 200 else {}
    tc = (msg.get("tool_calls") or [{}])[0]
    check("openai: tool call answer", st == 200 and msg.get("content") is None
          and obj["choices"][0]["finish_reason"] == "tool_calls"
          and tc.get("type") == "function" and tc["function"]["name"] == "weather"
          and json.loads(tc["function"]["arguments"]) == {"city": "Oslo"}
          and re.match(r"^call_[0-9a-f]{16}$", tc["id"]), obj)
    conv = [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [tc]},
            {"role": "tool", "tool_call_id": tc.get("id"), "content": "12 C"}]
    st, _, obj = c.json("POST", "/v1/chat/completions",
                        {"model": "tooler", "messages": conv, "tools": otools}, OA)
    check("openai: after the tool result, text", st == 200
          and obj["choices"][0]["message"]["content"] == "Sunny."
          and obj["choices"][0]["finish_reason"] == "stop", obj)
    bad = [
        ("tool call without id", [{"role": "user", "content": "x"},
                                  {"role": "assistant", "tool_calls": [
                                      {"type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
        ("arguments not JSON", [{"role": "user", "content": "x"},
                                {"role": "assistant", "tool_calls": [
                                    {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{"}}]},
                                {"role": "tool", "tool_call_id": "a", "content": "r"}]),
        ("tool result for no call", [{"role": "user", "content": "x"},
                                     {"role": "tool", "tool_call_id": "zz", "content": "r"}]),
        ("tool call never answered", [{"role": "user", "content": "x"},
                                      {"role": "assistant", "tool_calls": [
                                          {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]),
        ("unknown role", [{"role": "wizard", "content": "x"}]),
    ]
    for name, msgs in bad:
        st, _, obj = c.json("POST", "/v1/chat/completions", {"model": "tooler", "messages": msgs}, OA)
        check("openai rejects: %s" % name, st == 400, obj)
    st, _, obj = oa_chat(c, "tooler", "x", bogus_field=1)
    check("openai rejects an unknown top-level field", st == 400, obj)
    st, _, obj = oa_chat(c, "tooler", "x", tool_choice="auto")
    check("openai rejects tool_choice without tools", st == 400, obj)
    put_profile(c, "stopper", {"fixed_text": "one two three"})
    st, _, obj = oa_chat(c, "stopper", "x", stop=[" two"])
    check("openai: stop sequence cuts the answer", st == 200
          and obj["choices"][0]["message"]["content"] == "one"
          and obj["choices"][0]["finish_reason"] == "stop", obj)
    st, _, obj = an_msg(c, "stopper", "x", stop_sequences=[" two"])
    check("anthropic: stop sequence cuts the answer", st == 200
          and obj["content"][0]["text"] == "one" and obj["stop_reason"] == "stop_sequence", obj)

    # ---- Anthropic: tool_use / tool_result blocks
    st, _, obj = an_msg(c, "tooler", "weather?", tools=atools)
    blk = (obj.get("content") or [{}])[-1] if st == 200 else {}
    check("anthropic: tool_use answer", st == 200 and obj["stop_reason"] == "tool_use"
          and blk.get("type") == "tool_use" and blk.get("input") == {"city": "Oslo"}
          and re.match(r"^toolu_[0-9a-f]{16}$", blk.get("id", "")), obj)
    conv = [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [blk]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": blk.get("id"),
                                          "content": "12 C"}]}]
    st, _, obj = c.json("POST", "/v1/messages", {"model": "tooler", "max_tokens": 100,
                                                 "messages": conv, "tools": atools}, AN)
    check("anthropic: after the tool_result, text", st == 200
          and obj["content"][0]["text"] == "Sunny." and obj["stop_reason"] == "end_turn", obj)
    abad = [
        ("tool_result without a tool_use", [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "x", "content": "r"}]}]),
        ("tool_use not answered", [{"role": "user", "content": "q"},
                                   {"role": "assistant", "content": [
                                       {"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
                                   {"role": "user", "content": "no result"}]),
        ("tool_use from the user", [{"role": "user", "content": [
            {"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]}]),
        ("tool_use input not an object", [{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": [
                                              {"type": "tool_use", "id": "t1", "name": "weather", "input": "x"}]}]),
        ("empty text block", [{"role": "user", "content": [{"type": "text", "text": ""}]}]),
        ("system role in messages", [{"role": "system", "content": "x"}]),
    ]
    for name, msgs in abad:
        st, _, obj = c.json("POST", "/v1/messages", {"model": "tooler", "max_tokens": 10,
                                                     "messages": msgs}, AN)
        check("anthropic rejects: %s" % name, st == 400, obj)
    st, _, obj = an_msg(c, "tooler", "x", seed=1)
    check("anthropic rejects an OpenAI-only field (seed)", st == 400, obj)
    st, _, obj = an_msg(c, "tooler", "x", tools=[{"name": "weather"}])
    check("anthropic rejects a tool without input_schema", st == 400, obj)


def main():
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mock_llm_selftest.") as tmp:
        srv = MockServer(tmp, "a")
        c = Client(srv.port)
        try:
            test_basics(c, srv.port)
            n1 = refusal_count(c)
            test_openings(c)
            test_faults(c, srv.port)
            test_fuzz(c)
            test_embeddings(c)
            test_tools(c)
            test_log_and_control(c)
            test_concurrency(srv.port)
        except Exception as e:
            import traceback
            traceback.print_exc()
            check("no unexpected exception", False, repr(e))
            n1 = None
        finally:
            c.close()
            rc = srv.stop()
        check("SIGTERM -> clean exit 0", rc == 0, rc)
        err = srv.stderr()
        check("stderr: listening line, no tracebacks",
              "mock_llm listening on 127.0.0.1:%d" % srv.port in err
              and "Traceback" not in err, err[-2000:])

        # Second run, same seed: refusal decisions must be identical.
        # This run also loads profiles from --config.
        cfg = os.path.join(tmp, "profiles.json")
        with open(cfg, "w") as f:
            json.dump({"cfg-model": {"fixed_text": "from config"},
                       "*": {"opening": "Default star profile."}}, f)
        srv2 = MockServer(tmp, "b", ["--config", cfg])
        c2 = Client(srv2.port)
        try:
            n2 = refusal_count(c2)
            c2.json("POST", "/_mock/reset")
            st, _, obj = oa_chat(c2, "cfg-model", "x")
            check("--config profile survives reset",
                  st == 200 and obj["choices"][0]["message"]["content"] == "from config", obj)
            st, _, obj = an_msg(c2, "never-registered", "x")
            check("unknown model uses the \"*\" profile",
                  st == 200 and obj["content"][0]["text"].startswith("Default star profile."), obj)
        finally:
            c2.close()
            srv2.stop()
        check("refusal_rate 0.5: %s/200 refusals, same across runs (%s)" % (n1, n2),
              n1 is not None and n1 == n2 and 80 <= n1 <= 120)
    dt = time.monotonic() - t_start
    check("total time %.1f s < 30 s" % dt, dt < 30)
    print("%d passed, %d failed" % (PASSED, FAILED))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
