"""``chat``: the streamed answer equals batched generation of the same conversation, adapters switch,
and the real command works in a pseudo-terminal with Chinese input (needs ``pexpect``)."""

import io
import os
import sys

import pytest

from instructglm.chat.chat import ChatConfig, ChatSession
from instructglm.record import Message
from adapters import make_adapter, wire_chain


def test_session_streams_what_the_engine_answers(tiny_models, tmp_path):
    from instructglm.generation import SamplingConfig

    model = tiny_models("llama")
    a, b = (make_adapter(model, tmp_path / n, seed) for n, seed in (("a", 1), ("b", 2)))
    out = io.StringIO()
    session = ChatSession(ChatConfig(model=model, adapter=[f"a={a}", f"b={b}"], max_new_tokens=8), out=out)
    engine, template = session.engine, session.template

    def expected(messages):
        prompt = engine.prompt_ids(template, messages)
        return engine.generate([prompt], SamplingConfig(max_new_tokens=8), template.stop)[0]

    first = session.answer("你好，请介绍一下你自己")
    assert first == expected([{"role": "user", "content": "你好，请介绍一下你自己"}])
    assert out.getvalue().strip() == first.strip()
    second = session.answer("再说一遍")
    history = [{"role": "user", "content": "你好，请介绍一下你自己"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "再说一遍"}]
    assert second == expected(history)

    session.reset()
    session.switch("b")
    with_b = session.answer("hi")
    session.switch("base")
    session.reset()
    plain = session.answer("hi")
    assert session.history == [Message("user", "hi"), Message("assistant", plain)]
    session.model.set_adapter("b")
    assert with_b == expected([{"role": "user", "content": "hi"}])
    with session.model.disable_adapter():
        assert plain == expected([{"role": "user", "content": "hi"}])
    session.switch("nope")
    assert "unknown adapter 'nope'; loaded: a, b, base" in out.getvalue()


@pytest.fixture(scope="module")
def chain_model(tiny_models, tmp_path_factory):
    """A tiny model that always answers "Paris." and then opens a new "### Instruction:" turn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("chain") / "model"
    tok = AutoTokenizer.from_pretrained(tiny_models("llama"))
    model = AutoModelForCausalLM.from_pretrained(tiny_models("llama"))
    wire_chain(model, tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def spawn(*args):
    pexpect = pytest.importorskip("pexpect")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return pexpect.spawn(sys.executable, ["-m", "instructglm", "-q", "chat", *map(str, args)], env=env,
                         encoding="utf-8", timeout=60, dimensions=(40, 200))


def test_chat_in_a_terminal(chain_model, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    adapter = make_adapter(chain_model, tmp_path / "a", 1)
    child = spawn("--model", chain_model, "--adapter", f"a={adapter}", "--max-new-tokens", 40)
    child.expect_exact(">>> ")
    assert "chatting with" in child.before and "adapter a" in child.before
    child.sendline("/adapter base")
    child.expect_exact(">>> ")
    assert "now answering with the base model" in child.before
    child.sendline("法国的首都是哪里？")
    child.expect_exact(">>> ")
    assert "法国的首都是哪里？" in child.before  # echoed back intact
    assert "Paris.\r\n" in child.before and "###" not in child.before  # stopped at the marker, not shown
    child.sendline("再说一遍")
    child.expect_exact(">>> ")
    assert "Paris.\r\n" in child.before
    child.sendline("/reset")
    child.expect_exact("(conversation cleared)")
    child.expect_exact(">>> ")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_chat_ends_at_end_of_input(chain_model, monkeypatch, capsys):
    """Ctrl-D (end of input) ends the chat normally; without a terminal input is read line by line."""
    from instructglm.chat.chat import chat

    monkeypatch.setattr(sys, "stdin", io.StringIO("你好\n/adapter\n/bogus\n"))
    assert chat(ChatConfig(model=str(chain_model), max_new_tokens=40)) == {"turns": 1}
    out = capsys.readouterr().out
    assert "Paris.\n" in out and "###" not in out
    assert "no adapters are loaded" in out and "unknown command /bogus" in out
