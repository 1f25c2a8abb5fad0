"""Answers in the OpenAI format: one JSON body, or server-sent events as the text comes.

The batcher thread hands events to the request's ``sink``; they cross into the event loop through
a :class:`Mailbox` (one wake-up of the loop per burst, not per token and row) into the request's
:class:`asyncio.Queue`. A client that goes away (a closed stream, or a dropped connection while
waiting for a whole answer) cancels its request so the row leaves the batch at the next step.
"""

import asyncio
import json
import threading
import time
import weakref

from instructglm.serve.batcher import Delta, Done, Failed, GenRequest, wake_after_handing
from instructglm.serve.protocol import APIError, flag


class Mailbox:
    """Events posted from the scheduler thread, delivered into one event loop's queues in bursts.

    A step of the batch gives every row a token: waking the loop once per event (``call_soon_threadsafe``
    writes to its self-pipe each time) cost a system call and a GIL hand-over per row and token, and
    under load the scheduler thread waited for the GIL after each. Here events are delivered in
    bursts: a step's hand-out wakes the loop once at its end, and otherwise only the first event
    since the last delivery wakes it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.lock, self.pending = loop, threading.Lock(), []
        self.woken = False  # a delivery is scheduled on the loop and has not started yet

    def post(self, events: asyncio.Queue, event) -> None:
        with self.lock:
            self.pending.append((events, event))
            if self.woken:
                return
        if not wake_after_handing(self, self._wake):  # inside a step's hand-out: wake once at its end
            self._wake()

    def _wake(self) -> None:
        with self.lock:
            if self.woken or not self.pending:
                return
            self.woken = True
        self.loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self.lock:
            pending, self.pending, self.woken = self.pending, [], False
        for events, event in pending:
            events.put_nowait(event)


_MAILBOXES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox]" = weakref.WeakKeyDictionary()


def mailbox(loop: asyncio.AbstractEventLoop) -> Mailbox:
    """The mailbox of ``loop`` (runs on the loop: no race in making it)."""
    box = _MAILBOXES.get(loop)
    if box is None:
        box = _MAILBOXES[loop] = Mailbox(loop)
    return box


class Reply:
    """The identity of one answer (id, time, model, chat or plain completion) and its JSON shapes."""

    def __init__(self, req: GenRequest, chat: bool):
        self.req, self.chat = req, chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + req.id
        self.created, self.model = int(time.time()), req.adapter

    def usage(self, tokens: int) -> dict:
        prompt = len(self.req.prompt_ids)
        return {"prompt_tokens": prompt, "completion_tokens": tokens, "total_tokens": prompt + tokens}

    def whole(self, text: str, done: Done) -> dict:
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": done.reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": done.reason}
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage(done.tokens)}

    def chunk(self, text: str | None, finish: str | None = None, first: bool = False, usage: dict | None = None) -> str:
        """One server-sent event; ``text`` None: no choice (the closing usage chunk)."""
        if text is None:
            choices = []
        elif self.chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if finish is None else {})
            choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        else:
            choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]
        data = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices}
        if usage is not None:
            data["usage"] = usage
        return "data: " + json.dumps(data, ensure_ascii=False) + "\n\n"


async def _whole(request, req: GenRequest, events: asyncio.Queue, reply: Reply):
    from fastapi.responses import JSONResponse

    parts, done = [], None
    try:
        while done is None:
            try:
                event = await asyncio.wait_for(events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return JSONResponse(APIError(499, "client closed request").body(), status_code=499)
                continue
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Failed):
                raise APIError(500, event.message, type_="server_error")
            else:
                done = event
    finally:
        if done is None:
            req.cancel()
    return reply.whole("".join(parts), done)


async def _events(req: GenRequest, events: asyncio.Queue, reply: Reply, include_usage: bool):
    """The answer as server-sent events. Every event already waiting goes out in one write: each
    write passes the middleware stack and a socket send, and a loop that fell behind (or an
    answer's last piece with its closing chunks) would otherwise pay that once per event."""
    finished = False
    try:
        if reply.chat:
            yield reply.chunk("", first=True)
        out = []
        while not finished:
            event = await events.get()
            while True:
                finished = _event_chunks(event, reply, include_usage, out)
                if finished or events.empty():
                    break
                event = events.get_nowait()
            yield "".join(out)
            out = []
    finally:
        if not finished:  # the client went away (or the server is shutting down): free the row
            req.cancel()


def _event_chunks(event, reply: Reply, include_usage: bool, out: list[str]) -> bool:
    """Append ``event``'s server-sent events to ``out``; True when the answer is over."""
    if isinstance(event, Delta):
        out.append(reply.chunk(event.text))
        return False
    if isinstance(event, Failed):
        out.append("data: " + json.dumps(APIError(500, event.message, type_="server_error").body()) + "\n\n")
    else:
        out.append(reply.chunk("", event.reason))
        if include_usage:
            out.append(reply.chunk(None, usage=reply.usage(event.tokens)))
    out.append("data: [DONE]\n\n")
    return True


async def respond(request, server, req: GenRequest, body: dict, chat: bool):
    """Submit ``req`` and answer with its text: whole, or streamed when the body asks for it."""
    from fastapi.responses import StreamingResponse

    batcher = server.batcher
    if batcher.pending() >= server.cfg.max_queue:
        raise APIError(429, "the server is busy; retry shortly", code="server_busy", type_="server_error")
    stream = flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "'stream_options' must be an object", "stream_options")
    include_usage = flag(options, "include_usage")
    box = mailbox(asyncio.get_running_loop())
    events: asyncio.Queue = asyncio.Queue()
    req.sink = lambda event: box.post(events, event)
    reply = Reply(req, chat)
    batcher.submit(req)
    if not stream:
        return await _whole(request, req, events, reply)
    return StreamingResponse(_events(req, events, reply, include_usage), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

