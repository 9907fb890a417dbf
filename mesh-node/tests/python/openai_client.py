"""The PyPI `openai` client as an external caller of a ClosedMesh entry.

Usage: openai_client.py BASE_URL API_KEY MESH_MODEL FALLBACK_MODEL
Prints one JSON object with what the SDK saw; the Rust test (tests/openai_client.rs) asserts on it.
"""

import json
import sys
import urllib.error
import urllib.request

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

base, key, mesh_model, fallback_model = sys.argv[1:5]
messages = [{"role": "user", "content": "Say hello."}]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
out = {"openai_version": openai.__version__}


def closedmesh_headers(headers):
    return {k: v for k, v in headers.items() if k.lower().startswith("x-closedmesh-")}


def streamed(model):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=True)
    text, chunks = "", 0
    for chunk in raw.parse():
        chunks += 1
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return {"text": text, "chunks": chunks, "headers": closedmesh_headers(raw.headers)}


def whole(model):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    completion = raw.parse()
    return {
        "text": completion.choices[0].message.content,
        "usage": completion.usage.completion_tokens if completion.usage else None,
        "headers": closedmesh_headers(raw.headers),
    }


out["mesh_stream"] = streamed(mesh_model)
out["fallback_stream"] = streamed(fallback_model)
out["fallback_whole"] = whole(fallback_model)

# /api/chat: the testbed path, no model named; the SDK's own stream parser reads it.
api = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30)
stream = api.post(
    "/api/chat",
    body={"messages": messages, "stream": True},
    cast_to=ChatCompletion,
    stream=True,
    stream_cls=openai.Stream[ChatCompletionChunk],
)
out["api_chat_stream"] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

out["models"] = sorted(m.id for m in openai.OpenAI(base_url=base + "/v1", api_key="not-checked", max_retries=0).models.list())

try:
    openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0).chat.completions.create(
        model=mesh_model, messages=messages
    )
    out["wrong_key"] = "accepted"
except openai.AuthenticationError as e:
    out["wrong_key"] = {"status": e.status_code, "code": e.code, "body": e.body}

# No key at all, with the standard library (the SDK always sends one).
req = urllib.request.Request(
    base + "/api/chat",
    data=json.dumps({"messages": messages}).encode(),
    headers={"content-type": "application/json"},
    method="POST",
)
try:
    with urllib.request.urlopen(req, timeout=30) as resp:
        out["no_key"] = {"status": resp.status, "json": json.load(resp), "www_authenticate": resp.headers.get("www-authenticate")}
except urllib.error.HTTPError as e:
    out["no_key"] = {"status": e.code, "json": json.load(e), "www_authenticate": e.headers.get("www-authenticate")}

print(json.dumps(out))
