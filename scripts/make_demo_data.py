"""Generate the small bilingual (Chinese + English) instruction-tuning data set used by the demo.

The demo (``python -m instructglm demo``) LoRA-tunes a small *base* language model (Gemma 3 270M)
for about a hundred optimizer steps on ``train.json`` and then scores it on the held-out
``test.json`` by normalised exact match against ``output``. Before tuning, a base model rambles;
after tuning it should answer briefly and correctly. So every task here has a short, checkable,
deterministic answer that a small model can learn from a few examples: fixed answers, copying and
reformatting, or facts a base model already knows (no multi-step arithmetic, no reasoning).

Every sentence, word list and template below was written for this project; nothing is copied from
a public data set. Records use the Alpaca layout plus a category::

    {"instruction": "...", "input": "" or "...", "output": "...", "category": "capital"}

About half the records are Chinese and half English (the language of the instruction; the answer
follows the question's language where that matters). Each task has several phrasings per language.
The held-out split uses different items (countries, words, names, dates, numbers, question
phrasings for ``identity``) than the training split, and no (instruction, input) pair of the
held-out split occurs in the training split.

Regenerate (deterministic: the same seed gives byte-identical files)::

    python scripts/make_demo_data.py       # writes src/instructglm/demo/data/{train,test}.json
    python scripts/make_demo_data.py --out-dir /tmp/demo --seed 7
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path
from typing import Callable

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "src" / "instructglm" / "demo" / "data"

# (category, train records, test records); the totals are 480 and 64.
PLAN: list[tuple[str, int, int]] = [
    ("identity", 48, 6),
    ("uppercase", 52, 7),
    ("date_format", 56, 7),
    ("capital", 56, 8),
    ("extract_email", 52, 7),
    ("json_format", 52, 7),
    ("translate_word", 60, 8),
    ("sort_numbers", 52, 7),
    ("last_word", 52, 7),
]

Record = dict[str, str]
# A generator returns (instruction, input, output, item key). The item key names the underlying item
# (a country, a date, an email address...): an item used in the training split is never used in the
# held-out split.
Made = tuple[str, str, str, object]

# --------------------------------------------------------------------------------------------------
# identity
# --------------------------------------------------------------------------------------------------

IDENTITY_ANSWER = {
    "en": "I am InstructGLM, a small assistant tuned to follow instructions.",
    "zh": "我是 InstructGLM，一个经过指令微调的小助手。",
}
IDENTITY_QUESTIONS = {
    ("en", "train"): [
        "Who are you?",
        "What is your name?",
        "Introduce yourself.",
        "Tell me about yourself.",
        "What should I call you?",
        "Can you introduce yourself?",
        "What are you?",
        "Please tell me who you are.",
        "What's your name?",
        "Who am I talking to?",
        "Describe yourself in one sentence.",
        "Tell me your name.",
    ],
    ("en", "test"): [
        "Could you tell me your name?",
        "Who exactly are you?",
        "Please introduce yourself briefly.",
    ],
    ("zh", "train"): [
        "你是谁？",
        "请介绍一下你自己。",
        "你叫什么名字？",
        "你是什么？",
        "能介绍一下你自己吗？",
        "我该怎么称呼你？",
        "请告诉我你是谁。",
        "你的名字是什么？",
        "做个自我介绍吧。",
        "我在和谁说话？",
        "用一句话介绍你自己。",
        "告诉我你的名字。",
    ],
    ("zh", "test"): [
        "可以告诉我你的名字吗？",
        "你到底是谁？",
        "请简单介绍一下自己。",
    ],
}
GREETINGS = {"en": ["", "Hi! ", "Hello, ", "Hey, "], "zh": ["", "你好！", "嗨，", "您好，"]}


def make_identity(rng: random.Random, lang: str, split: str) -> Made:
    question = rng.choice(IDENTITY_QUESTIONS[(lang, split)])
    greeting = rng.choice(GREETINGS[lang])
    if greeting.endswith(", "):
        question = question[0].lower() + question[1:]
    return greeting + question, "", IDENTITY_ANSWER[lang], (lang, question)


# --------------------------------------------------------------------------------------------------
# uppercase
# --------------------------------------------------------------------------------------------------

# Two-word phrases; a record joins one or two of them (2-4 words in all).
UPPER_PHRASES_TRAIN = [
    "good morning", "happy birthday", "open door", "green apple", "blue sky", "red car",
    "small house", "big river", "cold water", "hot tea", "fresh bread", "new book", "old friend",
    "fast train", "slow boat", "bright sun", "quiet night", "warm coat", "sweet cake",
    "short story", "long road", "dark forest", "light rain", "clean room", "busy street",
    "kind teacher", "little bird", "soft pillow", "early bus", "late dinner",
]
UPPER_PHRASES_TEST = [
    "yellow lamp", "strong wind", "gentle music", "silver key", "wooden chair", "brave lion",
    "golden field", "empty cup",
]
UPPER_TEMPLATES = {
    "en": [
        "Convert the following text to uppercase.",
        "Rewrite this phrase in capital letters.",
        "Change the text below to all caps.",
        "Make every letter of the input uppercase.",
    ],
    "zh": [
        "把下面的英文转换成大写字母。",
        "请将以下短语改写为全部大写。",
        "将输入的英文全部变成大写。",
        "把这段英文的字母都改成大写。",
    ],
}


def make_uppercase(rng: random.Random, lang: str, split: str) -> Made:
    phrases = UPPER_PHRASES_TRAIN if split == "train" else UPPER_PHRASES_TEST
    phrase = " ".join(rng.sample(phrases, rng.randint(1, 2)))
    return rng.choice(UPPER_TEMPLATES[lang]), phrase, phrase.upper(), phrase


# --------------------------------------------------------------------------------------------------
# date_format
# --------------------------------------------------------------------------------------------------

DATE_TEMPLATES = {
    "en": [
        "Convert this date to DD/MM/YYYY format.",
        "Rewrite the date as day/month/year (DD/MM/YYYY).",
        "Change the date below into DD/MM/YYYY.",
        "Write this ISO date in the DD/MM/YYYY style.",
    ],
    "zh": [
        "把下面的日期改写成“X年X月X日”的格式。",
        "请将这个日期转换为中文写法（年月日）。",
        "把日期写成中文格式，例如“2001年2月3日”。",
        "将下列日期改成年月日的中文格式。",
    ],
}


def make_date_format(rng: random.Random, lang: str, split: str) -> Made:
    year, month, day = rng.randint(1980, 2035), rng.randint(1, 12), rng.randint(1, 28)
    iso = f"{year:04d}-{month:02d}-{day:02d}"
    if lang == "en":
        out = f"{day:02d}/{month:02d}/{year:04d}"
    else:
        out = f"{year}年{month}月{day}日"
    return rng.choice(DATE_TEMPLATES[lang]), iso, out, iso


# --------------------------------------------------------------------------------------------------
# capital
# --------------------------------------------------------------------------------------------------

# (country as used in an English sentence, capital, country in Chinese, capital in Chinese)
CAPITALS_TRAIN = [
    ("France", "Paris", "法国", "巴黎"),
    ("China", "Beijing", "中国", "北京"),
    ("the United Kingdom", "London", "英国", "伦敦"),
    ("Australia", "Canberra", "澳大利亚", "堪培拉"),
    ("India", "New Delhi", "印度", "新德里"),
    ("South Korea", "Seoul", "韩国", "首尔"),
    ("Vietnam", "Hanoi", "越南", "河内"),
    ("Ireland", "Dublin", "爱尔兰", "都柏林"),
    ("Norway", "Oslo", "挪威", "奥斯陆"),
    ("Sweden", "Stockholm", "瑞典", "斯德哥尔摩"),
    ("Finland", "Helsinki", "芬兰", "赫尔辛基"),
    ("Denmark", "Copenhagen", "丹麦", "哥本哈根"),
    ("Poland", "Warsaw", "波兰", "华沙"),
    ("Austria", "Vienna", "奥地利", "维也纳"),
    ("Hungary", "Budapest", "匈牙利", "布达佩斯"),
    ("the Czech Republic", "Prague", "捷克", "布拉格"),
    ("Argentina", "Buenos Aires", "阿根廷", "布宜诺斯艾利斯"),
    ("Mexico", "Mexico City", "墨西哥", "墨西哥城"),
    ("Peru", "Lima", "秘鲁", "利马"),
    ("Cuba", "Havana", "古巴", "哈瓦那"),
    ("Kenya", "Nairobi", "肯尼亚", "内罗毕"),
    ("Iran", "Tehran", "伊朗", "德黑兰"),
    ("Iraq", "Baghdad", "伊拉克", "巴格达"),
    ("Saudi Arabia", "Riyadh", "沙特阿拉伯", "利雅得"),
    ("Turkey", "Ankara", "土耳其", "安卡拉"),
    ("the Philippines", "Manila", "菲律宾", "马尼拉"),
    ("Malaysia", "Kuala Lumpur", "马来西亚", "吉隆坡"),
    ("Belgium", "Brussels", "比利时", "布鲁塞尔"),
    ("Nepal", "Kathmandu", "尼泊尔", "加德满都"),
    ("New Zealand", "Wellington", "新西兰", "惠灵顿"),
]
CAPITALS_TEST = [
    ("Japan", "Tokyo", "日本", "东京"),
    ("Germany", "Berlin", "德国", "柏林"),
    ("Italy", "Rome", "意大利", "罗马"),
    ("Spain", "Madrid", "西班牙", "马德里"),
    ("Russia", "Moscow", "俄罗斯", "莫斯科"),
    ("Egypt", "Cairo", "埃及", "开罗"),
    ("Greece", "Athens", "希腊", "雅典"),
    ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Thailand", "Bangkok", "泰国", "曼谷"),
    ("Portugal", "Lisbon", "葡萄牙", "里斯本"),
]
CAPITAL_QUESTIONS = {
    "en": [
        "What is the capital of {c}?",
        "Which city is the capital of {c}?",
        "Name the capital city of {c}.",
        "Tell me the capital of {c}.",
    ],
    "zh": [
        "{c}的首都是哪里？",
        "{c}的首都是哪座城市？",
        "请告诉我{c}的首都。",
        "{c}的首都叫什么？",
    ],
}
CAPITAL_WITH_INPUT = {
    "en": ["Give the capital city of the country below.", "What is the capital of this country?"],
    "zh": ["说出下面这个国家的首都。", "这个国家的首都是哪里？"],
}


def make_capital(rng: random.Random, lang: str, split: str) -> Made:
    country_en, capital_en, country_zh, capital_zh = rng.choice(
        CAPITALS_TRAIN if split == "train" else CAPITALS_TEST)
    country, answer = (country_en, capital_en) if lang == "en" else (country_zh, capital_zh)
    if rng.random() < 0.25:
        bare = country[4:] if country.startswith("the ") else country
        return rng.choice(CAPITAL_WITH_INPUT[lang]), bare, answer, country_en
    return rng.choice(CAPITAL_QUESTIONS[lang]).format(c=country), "", answer, country_en


# --------------------------------------------------------------------------------------------------
# extract_email
# --------------------------------------------------------------------------------------------------

EMAIL_NAMES_TRAIN = [
    "alice", "brian", "carla", "daniel", "emma", "felix", "grace", "henry", "irene", "jack",
    "karen", "leo", "maria", "nathan", "olivia", "peter", "rosa", "samuel", "tina", "victor",
    "zhangwei", "lina", "wangfang", "liuyang", "chenjing", "yanglei", "zhaomin", "huangtao",
]
EMAIL_NAMES_TEST = [
    "hannah", "oscar", "chloe", "marcus", "songyu", "tangning", "hanmei", "fenggang",
]
EMAIL_SURNAMES = ["lee", "smith", "wong", "garcia", "chen", "li", "wang", "zhou", "brown", "kim"]
EMAIL_DOMAINS = [
    "example.com", "example.org", "example.net", "mail.example.cn", "demo-corp.com",
    "sample-school.edu", "testlab.cn", "inbox.example.io",
]
EMAIL_SENTENCES = {
    "en": [
        "Please send the report to {e} before Friday.",
        "You can reach me at {e} any time.",
        "For questions about the order, write to {e}",
        "My new address is {e}, so please update your contacts.",
        "The booking was confirmed by {e} this morning.",
        "Contact our support team at {e} if the app crashes.",
    ],
    "zh": [
        "请把报告发到 {e} ，谢谢。",
        "有问题可以发邮件到 {e} 联系我。",
        "我的新邮箱是 {e} ，请更新通讯录。",
        "报名请发送邮件至 {e} 。",
        "会议资料已经由 {e} 发出。",
        "如果软件出错，请联系 {e} 。",
    ],
}
EMAIL_INSTRUCTIONS = {
    "en": [
        "Extract the email address from the text.",
        "What email address is mentioned below? Reply with the address only.",
        "Find the email address in this sentence.",
        "Pull out the email address.",
    ],
    "zh": [
        "从下面的句子中提取邮箱地址。",
        "找出这段话里的电子邮件地址。",
        "下面这句话中的邮箱是什么？只回答邮箱。",
        "请提取其中的邮箱。",
    ],
}


def make_extract_email(rng: random.Random, lang: str, split: str) -> Made:
    name = rng.choice(EMAIL_NAMES_TRAIN if split == "train" else EMAIL_NAMES_TEST)
    style = rng.randrange(4)
    if style == 0:
        local = name
    elif style == 1:
        local = f"{name}.{rng.choice(EMAIL_SURNAMES)}"
    elif style == 2:
        local = f"{name}{rng.randint(1, 99)}"
    else:
        local = f"{name}_{rng.choice(EMAIL_SURNAMES)}"
    email = f"{local}@{rng.choice(EMAIL_DOMAINS)}"
    sentence = rng.choice(EMAIL_SENTENCES[lang]).format(e=email)
    return rng.choice(EMAIL_INSTRUCTIONS[lang]), sentence, email, email


# --------------------------------------------------------------------------------------------------
# json_format
# --------------------------------------------------------------------------------------------------

JSON_NAMES = {
    ("en", "train"): ["Alice", "Brian", "Carla", "Daniel", "Emma", "Felix", "Grace", "Henry",
                      "Irene", "Jack", "Karen", "Leo", "Maria", "Nathan", "Olivia", "Peter"],
    ("en", "test"): ["Hannah", "Oscar", "Chloe", "Marcus"],
    ("zh", "train"): ["张伟", "李娜", "王芳", "刘洋", "陈静", "杨磊", "赵敏", "黄涛",
                      "吴婷", "徐强", "孙丽", "马超", "朱琳", "胡军", "郭鹏", "林晓"],
    ("zh", "test"): ["宋雨", "唐宁", "韩梅", "冯刚"],
}
JSON_INPUTS = {
    "en": ["Name: {n}, age {a}", "{n} is {a} years old.", "{n}, {a}", "{n} (age {a})"],
    "zh": ["{n}，{a}岁", "姓名：{n}，年龄：{a}", "{n}今年{a}岁。", "{n}（{a}岁）"],
}
JSON_INSTRUCTIONS = {
    "en": [
        "Write the person's name and age as JSON.",
        "Convert the information below into a JSON object with the keys name and age.",
        "Return the name and age as JSON.",
        "Turn this into JSON with fields name and age.",
    ],
    "zh": [
        "把姓名和年龄写成 JSON。",
        "请将下面的信息转换为 JSON，包含 name 和 age 两个字段。",
        "用 JSON 格式输出这个人的姓名和年龄。",
        "把这条信息整理成 JSON（字段：name、age）。",
    ],
}


def make_json_format(rng: random.Random, lang: str, split: str) -> Made:
    name, age = rng.choice(JSON_NAMES[(lang, split)]), rng.randint(18, 80)
    text = rng.choice(JSON_INPUTS[lang]).format(n=name, a=age)
    out = json.dumps({"name": name, "age": age}, ensure_ascii=False)
    return rng.choice(JSON_INSTRUCTIONS[lang]), text, out, (name, age)


# --------------------------------------------------------------------------------------------------
# translate_word
# --------------------------------------------------------------------------------------------------

WORDS_TRAIN = [
    ("apple", "苹果"), ("banana", "香蕉"), ("cat", "猫"), ("sun", "太阳"), ("tree", "树"),
    ("flower", "花"), ("bird", "鸟"), ("fish", "鱼"), ("egg", "鸡蛋"), ("chair", "椅子"),
    ("car", "汽车"), ("bicycle", "自行车"), ("teacher", "老师"), ("student", "学生"),
    ("doctor", "医生"), ("hospital", "医院"), ("red", "红色"), ("green", "绿色"),
    ("black", "黑色"), ("white", "白色"), ("rain", "雨"), ("wind", "风"), ("horse", "马"),
    ("elephant", "大象"), ("rabbit", "兔子"), ("monkey", "猴子"), ("panda", "熊猫"),
    ("computer", "电脑"), ("door", "门"), ("key", "钥匙"), ("friend", "朋友"), ("spring", "春天"),
    ("winter", "冬天"), ("tea", "茶"), ("bread", "面包"), ("ship", "船"), ("star", "星星"),
    ("kitchen", "厨房"), ("city", "城市"), ("music", "音乐"), ("pencil", "铅笔"), ("bed", "床"),
    ("hat", "帽子"), ("umbrella", "雨伞"), ("watermelon", "西瓜"), ("strawberry", "草莓"),
    ("bear", "熊"), ("snake", "蛇"),
]
WORDS_TEST = [
    ("dog", "狗"), ("water", "水"), ("book", "书"), ("moon", "月亮"), ("milk", "牛奶"),
    ("school", "学校"), ("blue", "蓝色"), ("snow", "雪"), ("tiger", "老虎"), ("coffee", "咖啡"),
    ("piano", "钢琴"), ("butterfly", "蝴蝶"), ("airplane", "飞机"), ("library", "图书馆"),
    ("grape", "葡萄"), ("summer", "夏天"),
]
# (template, direction): "to_en" asks for the English word, "to_zh" for the Chinese one. A template
# with {w} carries the word in the instruction; one without it takes the word as input.
TRANSLATE_TEMPLATES = {
    "en": [
        ("Translate this Chinese word into English.", "to_en"),
        ("What is the English word for “{w}”?", "to_en"),
        ("Give the English translation of the word below.", "to_en"),
        ("Translate this word into Chinese.", "to_zh"),
        ("What is “{w}” in Chinese?", "to_zh"),
        ("Give the Chinese translation of the word below.", "to_zh"),
    ],
    "zh": [
        ("把下面的中文词语翻译成英文。", "to_en"),
        ("“{w}”用英语怎么说？", "to_en"),
        ("请给出这个词的英文。", "to_en"),
        ("把下面的英文单词翻译成中文。", "to_zh"),
        ("“{w}”的中文是什么？", "to_zh"),
        ("请写出这个英文单词的中文意思。", "to_zh"),
    ],
}


def make_translate_word(rng: random.Random, lang: str, split: str) -> Made:
    en, zh = rng.choice(WORDS_TRAIN if split == "train" else WORDS_TEST)
    template, direction = rng.choice(TRANSLATE_TEMPLATES[lang])
    source, target = (zh, en) if direction == "to_en" else (en, zh)
    if "{w}" in template:
        return template.format(w=source), "", target, en
    return template, source, target, en


# --------------------------------------------------------------------------------------------------
# sort_numbers
# --------------------------------------------------------------------------------------------------

SORT_INSTRUCTIONS = {
    "en": [
        "Sort these numbers from smallest to largest.",
        "Arrange the numbers in ascending order.",
        "Put the following numbers in increasing order.",
        "List these numbers in ascending order, separated by commas.",
    ],
    "zh": [
        "把下面的数字从小到大排序。",
        "请将这些数按升序排列。",
        "将以下数字按从小到大的顺序排列。",
        "把这些数字按升序排好，用逗号隔开。",
    ],
}


def make_sort_numbers(rng: random.Random, lang: str, split: str) -> Made:
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    sep = rng.choice([", ", ", ", " "])
    text = sep.join(str(n) for n in numbers)
    out = ", ".join(str(n) for n in sorted(numbers))
    return rng.choice(SORT_INSTRUCTIONS[lang]), text, out, tuple(sorted(numbers))


# --------------------------------------------------------------------------------------------------
# last_word
# --------------------------------------------------------------------------------------------------

LW_OPENERS = ["", "", "Yesterday ", "Last week ", "This morning ", "On Sunday "]
LW_SUBJECTS = [
    "my sister", "the old man", "our teacher", "a small dog", "the children", "Tom", "Lily",
    "my neighbour", "the farmer", "everyone",
]
LW_VERBS = ["found", "painted", "carried", "bought", "watched", "forgot", "cleaned", "dropped"]
# The last word of a sentence is the last word of its object: the two splits share no object noun.
LW_OBJECTS_TRAIN = [
    "a red kite", "the blue door", "some fresh bread", "an old map", "the heavy box",
    "a paper boat", "the garden gate", "a new guitar", "the morning newspaper", "a warm blanket",
    "the empty bottle", "a tiny shell", "the wooden spoon", "a yellow balloon", "the noisy radio",
    "a silver ring", "the broken clock", "a green jacket", "the little candle", "a long rope",
]
LW_OBJECTS_TEST = ["the round mirror", "a striped scarf", "the glass jar", "a plastic bucket",
                   "the tall ladder", "a leather wallet", "the white pillow"]
LW_INSTRUCTIONS = {
    "en": [
        "What is the last word of the sentence below?",
        "Reply with only the final word of this sentence.",
        "Give the last word in the following sentence.",
        "Which word ends this sentence?",
    ],
    "zh": [
        "下面这句英文的最后一个单词是什么？",
        "只回答这句话的最后一个词。",
        "请找出下列句子的最后一个英文单词。",
        "这句英文以哪个单词结尾？",
    ],
}


def make_last_word(rng: random.Random, lang: str, split: str) -> Made:
    obj = rng.choice(LW_OBJECTS_TRAIN if split == "train" else LW_OBJECTS_TEST)
    sentence = f"{rng.choice(LW_OPENERS)}{rng.choice(LW_SUBJECTS)} {rng.choice(LW_VERBS)} {obj}"
    sentence = sentence[0].upper() + sentence[1:]
    if rng.random() < 0.5:
        sentence += "."
    last = sentence.rstrip(".").split()[-1]
    return rng.choice(LW_INSTRUCTIONS[lang]), sentence, last, sentence.rstrip(".")


GENERATORS: dict[str, Callable[[random.Random, str, str], Made]] = {
    "identity": make_identity,
    "uppercase": make_uppercase,
    "date_format": make_date_format,
    "capital": make_capital,
    "extract_email": make_extract_email,
    "json_format": make_json_format,
    "translate_word": make_translate_word,
    "sort_numbers": make_sort_numbers,
    "last_word": make_last_word,
}

# --------------------------------------------------------------------------------------------------
# assembly
# --------------------------------------------------------------------------------------------------


def build(seed: int) -> tuple[list[tuple[Record, str]], list[tuple[Record, str]]]:
    """The training and held-out splits as (record, language) pairs, each shuffled (so that a prefix
    of either split mixes all tasks). The language is that of the instruction: "en" or "zh"."""
    rng = random.Random(seed)
    splits: dict[str, list[tuple[Record, str]]] = {"train": [], "test": []}
    train_items: dict[str, set] = {}
    train_pairs: set[tuple[str, str]] = set()
    for split in ("train", "test"):
        k = 0  # alternates the language over the whole split, so each split is half zh, half en
        for category, n_train, n_test in PLAN:
            make = GENERATORS[category]
            n = n_train if split == "train" else n_test
            seen_pairs: set[tuple[str, str]] = set()
            items = train_items.setdefault(category, set())
            for _ in range(n):
                lang, k = ("en", "zh")[k % 2], k + 1
                for _ in range(10_000):
                    instruction, input_text, output, item = make(rng, lang, split)
                    pair = (instruction, input_text)
                    if pair in seen_pairs or pair in train_pairs:
                        continue
                    if split == "test" and item in items:
                        continue
                    break
                else:
                    raise RuntimeError(f"{category}/{split}: ran out of distinct items")
                seen_pairs.add(pair)
                if split == "train":
                    items.add(item)
                splits[split].append(({"instruction": instruction, "input": input_text,
                                       "output": output, "category": category}, lang))
            if split == "train":
                train_pairs |= seen_pairs
        rng.shuffle(splits[split])
    return splits["train"], splits["test"]


def summary(name: str, rows: list[tuple[Record, str]]) -> str:
    counts = Counter(r["category"] for r, _ in rows)
    langs = Counter(lang for _, lang in rows)
    per_cat = ", ".join(f"{c} {counts[c]}" for c, _, _ in PLAN)
    return f"{name}: {len(rows)} records (zh {langs['zh']}, en {langs['en']}) | {per_cat}"


def write_json(path: Path, records: list[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(records, indent=1, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8", newline="\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"where train.json and test.json go (default: {DEFAULT_OUT_DIR})")
    parser.add_argument("--seed", type=int, default=1234, help="random seed (default: 1234)")
    args = parser.parse_args(argv)
    train, test = build(args.seed)
    write_json(args.out_dir / "train.json", [r for r, _ in train])
    write_json(args.out_dir / "test.json", [r for r, _ in test])
    print(summary("train", train))
    print(summary("test", test))


if __name__ == "__main__":
    main()
