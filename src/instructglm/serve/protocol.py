"""What an OpenAI-style request body means: checked field by field, turned into a :class:`GenRequest`.

Messages become the typed record (:class:`~instructglm.record.Conversation`, ``developer`` read as
``system``), sampling numbers go through the engine's :class:`SamplingConfig`; whatever either
refuses comes back as a 400 whose ``param`` names the field (``messages[2].role``, ``top_p``).
Checks here are the API's own: JSON types, content parts, limits, unsupported options.
"""

import re
from collections import deque

from instructglm.generation.sampling import FLOAT32_TINY, SamplingConfig, SamplingError
from instructglm.record import Conversation, RecordError
from instructglm.serve.batcher import GenRequest

MAX_TEMPERATURE = 2.0  # OpenAI's range; the command line allows more
UNSUPPORTED = ("tools", "functions", "logprobs", "logit_bias")  # refused when given, rather than ignored
API_NAMES = {"max_new_tokens": "max_tokens"}  # sampling option -> request field, where they differ
_FIELD = re.compile(r"^(messages\[\d+\](?:\.\w+)?)")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def check_text(body) -> None:
    """Refuse a lone surrogate anywhere in the body (JSON can write ``"\\ud800"``; it is no character, and
    neither a tokenizer nor UTF-8 takes it): a 400 naming the field, e.g. ``messages[0].content``."""
    todo = deque([("", body)])
    while todo:  # a loop, not recursion: the body may nest as deep as the JSON parser allowed
        path, value = todo.popleft()
        if isinstance(value, dict):
            for key, item in value.items():
                _check_string(key, path, key=True)  # named by its object: the key cannot be shown
                todo.append((f"{path}.{key}" if path else key, item))
        elif isinstance(value, list):
            todo += [(f"{path}[{i}]", item) for i, item in enumerate(value)]
        elif isinstance(value, str):
            _check_string(value, path)


def _check_string(text: str, path: str, key: bool = False) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        where = (f"a key of '{path}'" if path else "a key of the body") if key else f"'{path}'"
        raise APIError(400, f"{where} holds a lone surrogate (\\u{ord(text[e.start]):04x}), which is not valid "
                            "Unicode text", path or None, "invalid_text") from None


def _number(body: dict, key: str, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise APIError(400, f"'{key}' must be a number", key)
    return float(v)


def positive_int(body: dict, key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise APIError(400, f"'{key}' must be a positive integer", key)
    return v


def flag(body: dict, key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise APIError(400, f"'{key}' must be true or false", key)
    return v


def _stops(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or len(v) > 4 or not all(isinstance(s, str) and s for s in v):
        raise APIError(400, "'stop' must be a non-empty string or a list of at most 4 of them", "stop")
    return tuple(v)


def _text_parts(m, i: int):
    """A message whose content is a list of text parts, with the parts joined (other content as it is)."""
    if not isinstance(m, dict) or not isinstance(m.get("content"), list):
        return m
    parts = []
    for p in m["content"]:
        if not (isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)):
            raise APIError(400, f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
        parts.append(p["text"])
    return {**m, "content": "".join(parts)}


def parse_messages(body: dict, limit: int) -> Conversation:
    msgs = body.get("messages")
    if msgs is None:
        raise APIError(400, "missing required parameter 'messages'", "messages", "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list", "messages")
    if len(msgs) > limit:
        raise APIError(400, f"too many messages: {len(msgs)} (at most {limit})", "messages", "too_many_messages")
    try:  # reply=False: the conversation ends with the turn to answer
        return Conversation.from_messages([_text_parts(m, i) for i, m in enumerate(msgs)], reply=False)
    except RecordError as e:
        field = _FIELD.match(str(e))
        raise APIError(400, str(e), field.group(1) if field else "messages") from None


def parse_sampling(body: dict, max_tokens: int) -> SamplingConfig:
    temperature, top_p = _number(body, "temperature", 0.0), _number(body, "top_p", 1.0)
    if temperature > MAX_TEMPERATURE:
        raise APIError(400, f"'temperature' must be at most {MAX_TEMPERATURE:g}", "temperature")
    for name, value in (("temperature", temperature), ("top_p", top_p)):
        if 0 < value < FLOAT32_TINY:  # would be 0 (or lose its precision) in float32: nothing could be drawn
            raise APIError(400, f"'{name}' is too small to sample with ({value:g}); use at least "
                                f"{FLOAT32_TINY:.3g}" + (" or 0 for greedy decoding" if name == "temperature" else ""),
                           name)
    try:
        return SamplingConfig(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p)
    except SamplingError as e:
        name = API_NAMES.get(e.field, e.field)
        raise APIError(400, f"'{name}' {e.problem}", name) from None


def _request(server, body: dict, prompt_ids: list[int], stops: tuple, strip: bool) -> GenRequest:
    if body.get("n") not in (None, 1):
        raise APIError(400, "only n=1 is supported", "n")
    for key in UNSUPPORTED:
        if body.get(key):
            raise APIError(400, f"'{key}' is not supported by this server", key)
    wanted = positive_int(body, "max_tokens") or positive_int(body, "max_completion_tokens") \
        or server.cfg.default_max_tokens
    room = server.context - len(prompt_ids)
    if room < 1:
        raise APIError(400, f"the prompt is {len(prompt_ids)} tokens; this model's context is {server.context}",
                       "messages", "context_length_exceeded")
    return GenRequest(prompt_ids=prompt_ids, sampling=parse_sampling(body, min(wanted, room)), adapter=body["model"],
                      stops=stops + _stops(body), strip=strip, ignore_eos=flag(body, "ignore_eos"))


def chat_request(server, body: dict) -> GenRequest:
    """``/v1/chat/completions``: the conversation rendered with the model's template."""
    template = server.template(body.get("model"))
    conversation = parse_messages(body, server.cfg.max_messages)
    ids = server.engine.prompt_ids(template, conversation.prompt)
    return _request(server, body, ids, template.stop, strip=True)


def completion_request(server, body: dict) -> GenRequest:
    """``/v1/completions``: one raw text prompt, continued as it is."""
    server.template(body.get("model"))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise APIError(400, "'prompt' must be a non-empty string (one prompt per request)", "prompt")
    return _request(server, body, server.engine.text_ids(prompt), (), strip=False)
