#!/usr/bin/env python3
"""
mock_ctl.py - drive the mock LLM server (test/mock_llm.py) from a psql test
through "\\! python3 test/mock_ctl.py ...".  Standard library only.

The server's URL comes from the environment variable LLM_CANARY_MOCK_URL
(http://127.0.0.1:PORT, set by test/run_suite.sh).

  put <model_id> '<profile json>'   set the model's profile; prints nothing
  last <model_id> <field>...        print fields of the last request the
                                    mock received for that model, one
                                    "field: <json>" line each; a field is a
                                    dotted path into the logged request, e.g.
                                    path, body.messages, body.max_tokens,
                                    headers.anthropic-version, auth_present
  count <model_id>                  print how many requests it received
  clear                             forget the request log

A missing field prints "<absent>".  API key values are never printed (the
mock only logs a redacted prefix; ask for auth_present instead).  Any
failure prints one "mock_ctl: ..." line and exits 1, so a test shows it.
"""

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

REDACTED = ("headers.authorization", "headers.x-api-key")


def call(method, path, body=None):
    base = os.environ.get("LLM_CANARY_MOCK_URL")
    if not base:
        raise RuntimeError("LLM_CANARY_MOCK_URL is not set")
    data = None if body is None else body.encode()
    req = urllib.request.Request(base.rstrip("/") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        raise RuntimeError("%s %s: HTTP %d %s" % (method, path, e.code,
                                                   e.read().decode("utf-8", "replace")))


def dig(obj, dotted):
    for part in dotted.split("."):
        if isinstance(obj, dict) and part in obj:
            obj = obj[part]
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return "<absent>"
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


def requests_of(model):
    q = urllib.parse.urlencode({"model": model})
    return call("GET", "/_mock/requests?" + q)


def main(argv):
    if len(argv) < 1:
        raise RuntimeError("usage: mock_ctl.py put|last|count|clear ...")
    cmd, args = argv[0], argv[1:]
    if cmd == "put" and len(args) == 2:
        json.loads(args[1])                 # fail here on a typo in the test
        call("PUT", "/_mock/models/" + urllib.parse.quote(args[0], safe=""), args[1])
    elif cmd == "last" and len(args) >= 2:
        reqs = requests_of(args[0])
        if not reqs:
            raise RuntimeError("no request for model %s" % args[0])
        for field in args[1:]:
            if field.lower() in REDACTED:
                raise RuntimeError("refusing to print %s" % field)
            print("%s: %s" % (field, dig(reqs[-1], field)))
    elif cmd == "count" and len(args) == 1:
        print("requests: %d" % len(requests_of(args[0])))
    elif cmd == "clear" and not args:
        call("DELETE", "/_mock/requests")
    else:
        raise RuntimeError("bad arguments: %s" % " ".join(argv))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Exception as e:                  # one line, visible in the test output
        print("mock_ctl: %s" % e)
        sys.exit(1)
