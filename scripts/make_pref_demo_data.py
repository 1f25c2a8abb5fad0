"""Generate the bilingual (Chinese + English) preference pairs of the alignment demo (``instructglm demo --stage dpo``).

Before any tuning, the embedded base model (Gemma 3 270M) fails a short question in one of two ways
under the Alpaca template: it repeats the question instead of answering (most Chinese prompts), or it
answers and then goes on with invented ``### Answer:`` sections until the token limit (most English
prompts). The demo teaches it, from preferences alone, to give one short answer and stop. So every
pair here is a task of the SFT demo's data (:mod:`make_demo_data`, same generators, same held-out
items) with::

    chosen   = the short reference answer (the template ends it with EOS)
    rejected = one of the two failures above, written by rule: the question echoed, or the answer
               followed by invented "### Answer:" / "### 答案：" sections

Records use the Alpaca preference layout plus the task's category and the failure's kind::

    {"instruction": "...", "input": "...", "chosen": "...", "rejected": "...", "category": "capital",
     "rejected_kind": "echo"}

Every sentence comes from ``make_demo_data.py`` (written for this project) or from the two rules
above; nothing is copied from a public data set. Deterministic: the same seed gives the same files::

    python scripts/make_pref_demo_data.py     # writes src/instructglm/demo/data/pref_{train,test}.json
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make_demo_data sits beside this script

from make_demo_data import DEFAULT_OUT_DIR, build, write_json  # noqa: E402

TRAIN_PAIRS = 192  # the first pairs of the (shuffled) SFT training split
TEST_PAIRS = 48  # the first pairs of the held-out split: all nine tasks, both languages
SECTION = {"en": "### Answer:", "zh": "### 答案："}


def echo(record: dict) -> str:
    """The question repeated instead of answered (what the base model does with most Chinese prompts)."""
    return record["instruction"].strip()


def ramble(record: dict, lang: str, rng: random.Random) -> str:
    """The answer, then invented answer sections (what it does with most English prompts)."""
    repeats = rng.randint(1, 3)
    return record["output"] + "".join(f"\n\n{SECTION[lang]}\n{record['output']}" for _ in range(repeats))


def to_pair(record: dict, lang: str, rng: random.Random) -> dict:
    kind = rng.choice(("echo", "ramble"))
    rejected = echo(record) if kind == "echo" else ramble(record, lang, rng)
    if rejected.strip() == record["output"].strip():  # an echo that happens to be the answer: ramble instead
        kind, rejected = "ramble", ramble(record, lang, rng)
    return {"instruction": record["instruction"], "input": record["input"], "chosen": record["output"],
            "rejected": rejected, "category": record["category"], "rejected_kind": kind}


def make_pairs(seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test) pairs; the held-out items are the SFT demo's held-out items (none in training)."""
    train, test = build(seed)
    rng = random.Random(seed + 1)
    return ([to_pair(r, lang, rng) for r, lang in train[:TRAIN_PAIRS]],
            [to_pair(r, lang, rng) for r, lang in test[:TEST_PAIRS]])


def summary(name: str, pairs: list[dict]) -> str:
    kinds = Counter(p["rejected_kind"] for p in pairs)
    cats = Counter(p["category"] for p in pairs)
    return f"{name}: {len(pairs)} pairs (rejected: {dict(kinds)}) | {dict(sorted(cats.items()))}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"where pref_train.json and pref_test.json go (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("--seed", type=int, default=1234, help="random seed (default: 1234, as the SFT data)")
    args = parser.parse_args(argv)
    train, test = make_pairs(args.seed)
    write_json(args.out_dir / "pref_train.json", train)
    write_json(args.out_dir / "pref_test.json", test)
    print(summary("train", train))
    print(summary("test", test))


if __name__ == "__main__":
    main()
