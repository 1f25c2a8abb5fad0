import json

import pytest

from instructglm.errors import UserError
from instructglm.record import Conversation, Message, RecordError, read_canonical


@pytest.mark.parametrize("messages,words", [
    ([], "non-empty"),
    ([{"role": "user", "content": "q"}], "last message"),
    ([{"role": "assistant", "content": "a"}], "out of order"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}], "empty assistant"),
    ([{"role": "user", "content": ["q"]}, {"role": "assistant", "content": "a"}], "must be text"),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}], "system message"),
    ([{"role": "bot", "content": "q"}], "role must be"),
])
def test_conversation_checks_roles_and_fields(messages, words):
    with pytest.raises(RecordError, match=words):
        Conversation.from_messages(messages)


def test_read_canonical_rejects_non_canonical(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    with pytest.raises(UserError, match=f"{p}:1: not a canonical record"):
        list(read_canonical(p))




def test_round_trip_keeps_alpaca_parts_and_metadata():
    rec = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Translate.\n\nGood", "instruction": "Translate.", "input": "Good"},
                        {"role": "assistant", "content": "好"}],
           "source": "a.json", "index": 3, "category": "translate"}
    conv = Conversation.from_json(rec)
    assert conv.messages[1] == Message.user("Translate.", "Good")
    assert conv.metadata == {"source": "a.json", "index": 3, "category": "translate"}
    assert conv.to_json() == rec and conv.reference == "好" and len(conv.prompt) == 2


def test_reply_optional_for_prompts_and_developer_is_system():
    conv = Conversation.from_messages([{"role": "developer", "content": "s"}, {"role": "user", "content": "q"}],
                                      reply=False)
    assert [m.role for m in conv.messages] == ["system", "user"] and conv.reference is None
    with pytest.raises(RecordError, match="last message"):
        Conversation.from_messages([{"role": "user", "content": "q"}])
    with pytest.raises(RecordError, match="no user message"):
        Conversation.from_messages([{"role": "system", "content": "s"}], reply=False)
