"""Column maps: ``convert --map instruction=question --map output=std_answer`` for layouts no format lists.

A map names, for a field of one of two generic layouts, the key a file uses for it:

* one turn: ``instruction``, ``input``, ``output`` (read as Alpaca's fields), with ``system`` and
  ``history`` (``[[user, assistant], ...]``);
* a list of turns: ``messages`` (the list), ``role`` and ``content`` (the keys inside each turn;
  roles are spelled as ShareGPT/BELLE/OpenAI do: human/user, gpt/assistant, system, ...), with ``system``.

Preference data maps its answers too, and the fields above then give the prompt (with no ``output``):
``chosen`` and ``rejected`` (a pair: each text, an assistant message or a one-message list), or
``completion`` and ``label`` (KTO: one answer and a boolean). Mapping any of them reads the file as
preference data (``convert`` writes preference records).

A field the map leaves out keeps its own name. A key the map names that a record lacks is a
``FILE:LINE`` error (the reply only when replies are required), since a misspelt map would
otherwise turn every record into a rejection of a different kind. Keys the map does not consume
stay as metadata, as in any format (BELLE's ``class`` becomes the ``category`` eval groups by).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from instructglm.convert.formats import DatasetFormat
from instructglm.convert.turns import prompt_response, speaker_turns
from instructglm.errors import UserError
from instructglm.record import Message, Preference, RecordError

SINGLE_TURN = ("instruction", "input", "output", "history")
MULTI_TURN = ("messages", "role", "content")
SHARED = ("system",)
PAIR = ("chosen", "rejected")
KTO = ("completion", "label")
FIELDS = (*SINGLE_TURN, *MULTI_TURN, *SHARED, *PAIR, *KTO)

# Key names that suggest a field, for the example map of an undetected file (first match wins).
_PROMPT_HINTS = ("instruction", "question", "query", "prompt", "ask", "input", "source", "src", "q")
_REPLY_HINTS = ("output", "answer", "response", "reply", "completion", "target", "label", "tgt", "a")
_TURN_HINTS = {"role": ("role", "from", "speaker", "author", "sender"),
               "content": ("content", "value", "text", "message", "utterance")}


@dataclass(frozen=True)
class ColumnMap:
    """``field -> the file's key`` for the fields the user mapped."""

    keys: dict[str, str]

    @classmethod
    def parse(cls, items: list[str]) -> "ColumnMap | None":
        """The map of ``--map FIELD=KEY`` items (``None`` for none); a bad item is a UserError naming it."""
        keys: dict[str, str] = {}
        for item in items:
            field, _, key = item.partition("=")
            field, key = field.strip(), key.strip()
            if not field or not key:
                raise UserError(f"--map {item}: expected FIELD=KEY, e.g. --map instruction=question")
            if field not in FIELDS:
                raise UserError(f"--map {item}: unknown field '{field}'; known: {', '.join(FIELDS)}")
            if keys.get(field, key) != key:
                raise UserError(f"--map {item}: '{field}' is already mapped to '{keys[field]}'")
            keys[field] = key
        if not keys:
            return None
        single = [f for f in keys if f in SINGLE_TURN]
        multi = [f for f in keys if f in MULTI_TURN]
        if single and multi:
            raise UserError(f"--map: {single[0]} (one turn per record) and {multi[0]} (a list of turns) "
                            f"belong to different layouts; map the fields of one")
        _check_preference_fields(keys)
        return cls(keys)

    @property
    def multi_turn(self) -> bool:
        return any(f in self.keys for f in MULTI_TURN)

    @property
    def preference(self) -> bool:
        """Whether the map names an answer of preference data (then the file is read as preference data)."""
        return any(f in self.keys for f in (*PAIR, *KTO))

    @property
    def kto(self) -> bool:
        return any(f in self.keys for f in KTO)

    def key(self, field: str) -> str:
        return self.keys.get(field, field)

    def describe(self) -> str:
        return " ".join(f"--map {f}={k}" for f, k in self.keys.items())

    def as_format(self) -> DatasetFormat:
        """A dataset format that reads records through this map (it detects nothing: the map is given);
        for a preference map, a preference format (:meth:`read_preference`)."""
        fields = MULTI_TURN[:1] + SHARED if self.multi_turn else SINGLE_TURN + SHARED
        if self.preference:
            from instructglm.convert.preference import PreferenceFormat, refuse_sft

            fields += KTO if self.kto else PAIR
            return PreferenceFormat("mapped", refuse_sft, lambda rec: False, tuple(self.key(f) for f in fields),
                                    read_preference=self.read_preference)
        return DatasetFormat("mapped", self.read, lambda rec: False, tuple(self.key(f) for f in fields))

    def _check_keys(self, rec: dict, reply: bool) -> None:
        """Every mapped key must be in the record: a misspelt map is named, not read as a missing field."""
        for field, key in self.keys.items():
            optional = field in ("role", "content") or (field == "output" and not reply)
            if not optional and key not in rec:
                raise RecordError(f"--map {field}={key}: the record has no key '{key}' "
                                  f"(its keys: {', '.join(sorted(rec))})")

    def read(self, rec: dict, reply: bool) -> list[Message]:
        self._check_keys(rec, reply)
        return self._turns(rec, reply)

    def read_preference(self, rec: dict) -> Preference:
        """The prompt (the SFT fields, without a reply) and the mapped answers: a pair, or a KTO completion."""
        from instructglm.convert.preference import answer

        self._check_keys(rec, reply=False)
        prompt = self._turns({k: v for k, v in rec.items() if k != self.key("output")}, reply=False)
        for field in KTO if self.kto else PAIR:
            if self.key(field) not in rec:  # a field the map left out, under its own name
                raise RecordError(f"missing field '{field}' (or map it: --map {field}=KEY)")
        if self.kto:
            label = rec[self.key("label")]
            if not isinstance(label, bool):
                raise RecordError(f"'{self.key('label')}' (the KTO label) must be true or false, got {label!r}")
            return Preference(prompt, answer(rec[self.key("completion")], self.key("completion")), None, label)
        chosen, rejected = self.key("chosen"), self.key("rejected")
        return Preference(prompt, answer(rec[chosen], chosen), answer(rec[rejected], rejected))

    def _turns(self, rec: dict, reply: bool) -> list[Message]:
        view = dict(rec)  # the shared fields under the names the readers look for
        for field in ("system", "history"):
            if field in self.keys:
                view.pop(field, None)
                if self.keys[field] in rec:
                    view[field] = rec[self.keys[field]]
        if self.multi_turn:
            return speaker_turns(view, reply, self.key("messages"), self.key("role"), self.key("content"))
        return prompt_response(view, self.key("instruction"), self.key("output"), reply, input_key=self.key("input"))


def _check_preference_fields(keys: dict[str, str]) -> None:
    """A preference map names a pair or a KTO completion, never both, and no SFT reply."""
    pair, kto = [f for f in PAIR if f in keys], [f for f in KTO if f in keys]
    if pair and kto:
        raise UserError(f"--map: {pair[0]} (a chosen/rejected pair) and {kto[0]} (a KTO completion and its label) "
                        f"belong to different layouts; map the fields of one")
    if (pair or kto) and "output" in keys:
        raise UserError(f"--map output={keys['output']} with {(pair or kto)[0]}: preference data has no single reply; "
                        f"map its answers to chosen and rejected (or completion and label)")


def _pick(keys: list[str], hints: tuple[str, ...], taken: str | None = None) -> str | None:
    for hint in hints:
        for key in keys:
            if key != taken and (key.lower() == hint or (len(hint) > 2 and hint in key.lower())):
                return key
    return None


def example_map(record: Any) -> str | None:
    """A ``--map`` line that would likely read ``record``, guessed from its keys (None if no guess)."""
    if not isinstance(record, dict):
        return None
    for key, value in record.items():  # a list of turn objects: the multi-turn layout
        if isinstance(value, list) and value and isinstance(value[0], dict):
            turn = [k for k in value[0] if isinstance(k, str)]
            role = _pick(turn, _TURN_HINTS["role"]) or (turn[0] if turn else "ROLE_KEY")
            content = _pick(turn, _TURN_HINTS["content"], role) or next(
                (k for k in turn if k != role), "CONTENT_KEY")
            return f"--map messages={key} --map role={role} --map content={content}"
    texts = [k for k, v in record.items() if isinstance(v, str)]
    prompt = _pick(texts, _PROMPT_HINTS) or (texts[0] if texts else None)
    answer = _pick(texts, _REPLY_HINTS, prompt) or next((k for k in texts if k != prompt), None)
    if prompt is None or answer is None:
        return None
    return f"--map instruction={prompt} --map output={answer}"


def undetected(path: Any, samples: list[Any], known: list[str]) -> UserError:
    """The error for a file no format accepts: the keys seen, the formats known and an example map."""
    first = samples[0] if samples else None
    keys = sorted(first) if isinstance(first, dict) else []
    example = example_map(first)
    hint = f"; or map its keys, e.g. {example}" if example else "; or map its keys with --map FIELD=KEY"
    return UserError(f"{path}: cannot detect the dataset format (first record's keys: {', '.join(keys) or 'none'}); "
                     f"known formats: {', '.join(known)}; use --format NAME{hint}")
