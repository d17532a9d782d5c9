# Driven by tests/tests/code_interpreter.rs: one scenario per run, with the
# official `openai` / `anthropic` SDKs against a real brain. Prints one JSON
# line with what the Rust side asserts on. Env: BASE_URL, API_KEY, OTHER_KEY.
import json, os, sys

import openai

BASE = os.environ["BASE_URL"]
KEY = os.environ["API_KEY"]
client = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY, max_retries=0)
CI_AUTO = {"type": "code_interpreter", "container": {"type": "auto"}}


def items(resp):
    return [i.model_dump() for i in resp.output]


def responses_sum():
    r = client.responses.create(model="ci-sum", tools=[CI_AUTO],
                                input="what is the sum of 0..9? use python")
    return {"output": items(r), "text": r.output_text, "status": r.status,
            "usage": r.usage.model_dump() if r.usage else None}


def responses_stream():
    types, deltas, final = [], [], None
    with client.responses.stream(model="ci-sum", tools=[CI_AUTO],
                                 input="what is the sum of 0..9? use python") as s:
        for ev in s:
            types.append(ev.type)
            if ev.type == "response.output_text.delta":
                deltas.append(ev.delta)
        final = s.get_final_response()
    return {"types": types, "deltas": deltas, "output": items(final),
            "text": final.output_text}


def chat_stream():
    deltas, finish, roles = [], None, []
    s = client.chat.completions.create(
        model="ci-sum", tools=[CI_AUTO], stream=True,
        messages=[{"role": "user", "content": "what is the sum of 0..9? use python"}])
    for chunk in s:
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                deltas.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    return {"deltas": deltas, "finish": finish, "roles": roles}


def chat_sum():
    r = client.chat.completions.create(
        model="ci-sum", tools=[CI_AUTO],
        messages=[{"role": "user", "content": "what is the sum of 0..9? use python"}])
    return {"content": r.choices[0].message.content, "finish": r.choices[0].finish_reason}


def container_reuse():
    c = client.containers.create(name="reuse")
    tool = {"type": "code_interpreter", "container": c.id}
    first = client.responses.create(model="ci-set", tools=[tool], input="set x")
    second = client.responses.create(model="ci-get", tools=[tool], input="read x")
    other = openai.OpenAI(base_url=BASE + "/v1", api_key=os.environ["OTHER_KEY"], max_retries=0)
    refused = None
    try:
        other.responses.create(model="ci-get", tools=[tool], input="read x")
    except openai.NotFoundError as e:
        refused = {"status": e.status_code, "message": str(e)}
    try:
        other.containers.retrieve(c.id)
        other_retrieve = "found"
    except openai.NotFoundError:
        other_retrieve = 404
    mine = client.containers.retrieve(c.id).id
    client.containers.delete(c.id)
    return {"container": c.id, "first": items(first), "second": items(second),
            "refused": refused, "other_retrieve": other_retrieve, "mine": mine}


def libs():
    r = client.responses.create(model="ci-libs", tools=[CI_AUTO], input="plot it")
    return {"output": items(r)}


def network():
    r = client.responses.create(model="ci-net", tools=[CI_AUTO], input="fetch it")
    return {"output": items(r)}


def anthropic_sum():
    import anthropic
    a = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
    m = a.beta.messages.create(
        model="ci-sum", max_tokens=256, betas=["code-execution-2025-05-22"],
        tools=[{"type": "code_execution_20250522", "name": "code_execution"}],
        messages=[{"role": "user", "content": "what is the sum of 0..9? use python"}])
    return {"content": [b.model_dump() for b in m.content], "stop": m.stop_reason}


def image_files():
    r = client.responses.create(model="ci-img", tools=[CI_AUTO], input="draw a dot")
    c = client.chat.completions.create(
        model="ci-img", tools=[CI_AUTO], messages=[{"role": "user", "content": "draw a dot"}])
    return {"responses": items(r), "responses_text": r.output_text,
            "chat": c.choices[0].message.content}


def anthropic_stream():
    import time
    import anthropic
    a = anthropic.Anthropic(base_url=BASE, api_key=KEY, max_retries=0)
    args = dict(model="ci-slow", max_tokens=256, betas=["code-execution-2025-05-22"],
                tools=[{"type": "code_execution_20250522", "name": "code_execution"}],
                messages=[{"role": "user", "content": "what is the sum of 0..9? use python"}])
    # The raw events as they arrive, with the time the call and its result came.
    raw, text_deltas, at = [], [], {}
    for ev in a.beta.messages.create(stream=True, **args):
        raw.append(ev.model_dump(mode="json"))
        if ev.type == "content_block_start":
            at.setdefault(ev.content_block.type, time.monotonic())
        if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
            text_deltas.append(ev.delta.text)
    # The SDK's own accumulation of the stream into a message.
    with a.beta.messages.stream(**args) as s:
        for _ in s:
            pass
        final = s.get_final_message()
    return {"raw": raw, "text_deltas": text_deltas,
            "call_to_result_s": at["code_execution_tool_result"] - at["server_tool_use"],
            "final": final.model_dump(mode="json")}


if __name__ == "__main__":
    print(json.dumps(globals()[sys.argv[1]]()))
