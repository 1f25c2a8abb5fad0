"""``serve``: an OpenAI-compatible HTTP API (and a small chat page) over a base model and its adapters.

Routes: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with
``stream`` as server-sent events ending in ``data: [DONE]``), ``GET /health`` and the chat page at
``/``. ``model`` in a request is ``base`` or the name of an adapter given with ``--adapter
NAME=PATH``; all adapters are loaded once on one base model. Chat prompts are rendered with the
template the adapter was trained with (its run info), encoded exactly as in training, and answers
are cut at the template's turn markers and at EOS.

Safe defaults: binds 127.0.0.1; with ``--api-key`` every route except ``/health`` and the static
page needs ``Authorization: Bearer KEY``; bodies, messages and ``max_tokens`` are capped; every
error is an OpenAI-style JSON body, never a traceback.
"""

import logging
import time
from dataclasses import dataclass
from typing import Literal

from instructglm.config import SEED, check_numbers, opt
from instructglm.errors import UserError
from instructglm.generation.engine import Engine
from instructglm.serve.batcher import BASE, Batcher, Scheduler
from instructglm.serve.protocol import APIError

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    model: str | None = opt(None, help="base model (default: the adapters' base model, else gemma3-270m)")
    adapter: list[str] = opt([], help="trained adapter as NAME=PATH (or PATH); repeat for several")
    template: str | None = opt(None, help="prompt template of the base model (adapters use their own)")
    host: str = opt("127.0.0.1", help="address to bind (0.0.0.0 exposes the server to the network)")
    port: int = opt(8000, help="TCP port", min=0, max=65535)
    api_key: str | None = opt(None, help="require 'Authorization: Bearer KEY' on every API route "
                                         "(or set INSTRUCTGLM_API_KEY)")
    max_batch_size: int = opt(16, help="requests generated together in one batch", min=1)
    scheduler: Literal["continuous", "wave"] = opt("continuous", help="continuous: requests join the running batch "
                                                   "at the next step; wave: the old per-wave batcher (comparison)")
    prefill_tokens: int = opt(512, help="continuous scheduler: prompt tokens of newcomers fed per step", min=1)
    default_max_tokens: int = opt(256, help="max_tokens when a request does not say", min=1)
    max_messages: int = opt(256, help="most messages in one chat request", min=1)
    max_body_bytes: int = opt(1_000_000, help="largest request body", min=1)
    max_queue: int = opt(256, help="requests waiting or running before new ones get 429", min=1)
    seed: int = opt(0, help="sampling seed", **SEED)

    def validate(self) -> None:
        check_numbers(self)  # the ranges declared above, for configs built in code (the CLI checked them already)
        if self.api_key is not None and not self.api_key.strip():
            raise UserError("--api-key: must not be empty")


class Server:
    """The model-side state of one ``serve`` process: the batcher over the engine, templates, limits."""

    def __init__(self, batcher: Scheduler, templates: dict, cfg: ServeConfig, model_name: str = ""):
        self.batcher, self.templates, self.cfg, self.model_name = batcher, templates, cfg, model_name
        self.engine: Engine = batcher.engine
        self.context = self.engine.context_length()
        self.created = int(time.time())

    def template(self, model):
        if not isinstance(model, str) or not model:
            raise APIError(400, "missing required parameter 'model' (see GET /v1/models)", "model",
                           "missing_required_parameter")
        if model not in self.templates:
            raise APIError(404, f"The model '{model}' does not exist; available: {', '.join(self.templates)}",
                           "model", "model_not_found")
        return self.templates[model]

    def model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "instructglm"}


# ------------------------------------------------------------------------------------------- build
def build_server(cfg: ServeConfig, start: bool = True) -> Server:
    """Load the base model and every adapter once; return the (started) server state."""
    from instructglm.generation.loading import trained_templates
    from instructglm.models.adapters import load_with_adapters, parse_adapters
    from instructglm.runinfo import choose_template
    from instructglm.templates import get_template

    adapters = parse_adapters(cfg.adapter)
    model, tokenizer, names = load_with_adapters(cfg.model, adapters)
    templates = {}
    if not names or hasattr(model, "disable_adapter"):  # freeze/full results changed the base weights: no base
        templates[BASE] = get_template(choose_template(cfg.template, {}), tokenizer)
    for name, trained in trained_templates(adapters).items():  # each adapter is prompted its own way
        templates[name] = get_template(choose_template(None, {name: trained}), tokenizer)
    batcher = make_scheduler(cfg, Engine(model, tokenizer), names if hasattr(model, "set_adapter") else [])
    if start:
        batcher.start()
    return Server(batcher, templates, cfg, cfg.model or "")


def make_scheduler(cfg: ServeConfig, engine: Engine, adapters: list[str]) -> Scheduler:
    """The scheduler ``--scheduler`` asks for; wave where the model cannot be batched continuously."""
    from instructglm.serve.continuous import ContinuousBatcher, why_not_continuous

    if cfg.scheduler == "continuous":
        reason = why_not_continuous(engine)
        if reason is None:
            return ContinuousBatcher(engine, adapters, cfg.max_batch_size, cfg.seed, cfg.prefill_tokens)
        log.warning("--scheduler continuous: not for this model (%s); using the wave scheduler", reason)
    return Batcher(engine, adapters, max_batch=cfg.max_batch_size, seed=cfg.seed)


def serve(cfg: ServeConfig) -> None:
    import os

    import uvicorn

    from instructglm.serve.routes import create_app

    if cfg.api_key is None and os.environ.get("INSTRUCTGLM_API_KEY"):  # keeps the key out of `ps`
        cfg.api_key = os.environ["INSTRUCTGLM_API_KEY"]
    server = build_server(cfg)
    app = create_app(server)
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and cfg.api_key is None:
        log.warning("serving on %s without --api-key: anyone who can reach this address can use the model",
                    cfg.host)
    print(f"serving {', '.join(server.templates)} on http://{cfg.host}:{cfg.port}/ "
          f"(OpenAI API at /v1, chat page at /)", flush=True)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        server.batcher.stop()
