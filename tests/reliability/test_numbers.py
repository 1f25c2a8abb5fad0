"""Numbers on the command line, in ``key=value`` overrides and in YAML configs go through one check
(``instructglm.config.number_problem``, declared per field with ``opt(..., min=, max=, above=, below=)``):
a non-finite float, a number outside its declared range and an integer too large for 64 bits (or for
Python, past 4,300 digits) are one line naming the option and where the value came from, exit status 2,
no traceback, before any model or file is touched.

Every case runs through the real CLI (``main``), with a model path that does not exist: a message
about the model would mean the config was not checked first."""

import dataclasses
import math
import subprocess
import sys

import pytest

from instructglm.cli import VERBS, main
from instructglm.config import Range, _base_type, load_config, number_problem, opt, options
from instructglm.errors import UserError
from instructglm.generation.sampling import FLOAT32_TINY, SamplingConfig, SamplingError, pick_next
from instructglm.train import TrainConfig
from instructglm.train.methods import LoraOptions

NO_MODEL = "/nonexistent/model-dir"
HUGE = "9" * 5000  # Python's int() refuses more than 4,300 digits


def run_cli(capsys, *args):
    code = main(["-q", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(code, err, *words):
    """The one error line, after checking the promise: exit 2, one line, no traceback, ``words`` in it."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], err
    assert len(lines[0]) < 400, lines[0]  # a 5,000-digit value is cut, not printed
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert NO_MODEL not in lines[0]
    return lines[0]


def train(tmp_path, *extra):
    return ["train", "--dataset", tmp_path / "nowhere", "-o", tmp_path / "run", "--model", NO_MODEL, *extra]


# ------------------------------------------------------------------ family: non-finite floats

@pytest.mark.parametrize("flag", ["--learning-rate", "--weight-decay", "--max-grad-norm", "--lora-alpha",
                                  "--lora-dropout", "--num-epochs", "--val-size"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_train_refuses_non_finite_floats(tmp_path, capsys, flag, value):
    given = [f"{flag}={value}"] if value.startswith("-") else [flag, value]  # argparse: -inf alone is a flag
    code, _, err = run_cli(capsys, *train(tmp_path, *given, "--dry-run"))
    one_error(code, err, flag, "must be a finite number")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("verb,flag", [("infer", "--temperature"), ("infer", "--top-p"),
                                       ("infer", "--repetition-penalty"), ("chat", "--temperature"),
                                       ("chat", "--top-p"), ("merge", "--tolerance")])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_other_verbs_refuse_non_finite_floats(tmp_path, capsys, verb, flag, value):
    code, _, err = run_cli(capsys, verb, "--model", NO_MODEL, flag, value)
    one_error(code, err, flag, "must be a finite number")


def every_float_option():
    for name, verb in VERBS.items():
        for key, option in options(verb.target()[0]).items():
            if _base_type(option.type)[0] is float:
                yield name, key


@pytest.mark.parametrize("verb,key", list(every_float_option()))
def test_every_float_option_of_every_verb_refuses_nan(capsys, verb, key):
    """The family, not the instances: no float option anywhere takes nan."""
    flag = "--" + key.replace("_", "-")
    code, _, err = run_cli(capsys, verb, flag, "nan")
    one_error(code, err, flag, "finite")


# ------------------------------------------------------------------ family: declared ranges

@pytest.mark.parametrize("extra,words", [
    (["--learning-rate", "0"], "learning_rate: must be > 0, got 0.0"),
    (["--learning-rate=-1e-4"], "learning_rate: must be > 0"),
    (["--weight-decay=-0.1"], "weight_decay: must be >= 0"),
    (["--lora-alpha", "0"], "lora_alpha: must be > 0"),
    (["--lora-dropout", "1"], "lora_dropout: must be in [0, 1)"),
    (["--seed", "-1"], "seed: must be between 0 and 4294967295, got -1"),
    (["--seed", str(2**32)], "seed: must be between 0 and 4294967295"),
    (["--max-steps", "-2"], "max_steps: must be >= -1"),
    (["--batch-size", "0"], "per_device_train_batch_size: must be at least 1"),
    (["--pre-seq-len", "0"], "pre_seq_len: must be at least 1"),
])
def test_train_ranges(tmp_path, capsys, extra, words):
    code, _, err = run_cli(capsys, *train(tmp_path, *extra, "--dry-run"))
    one_error(code, err, words, extra[0].split("=")[0])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,words", [
    (["merge", "--tolerance", "-1"], ["--tolerance", "tolerance: must be >= 0, got -1.0"]),
    (["infer", "--top-p", "1e-300"], ["--top-p", "top_p: must be between 1.17549e-38 and 1"]),
    (["infer", "--top-p", "0"], ["--top-p", "top_p: must be between"]),
    (["infer", "--top-p", "1.5"], ["--top-p", "top_p: must be between"]),
    (["infer", "--temperature", "-1"], ["--temperature", "temperature: must be between 0 and 100"]),
    (["infer", "--seed", "-1"], ["--seed", "seed: must be between 0 and 4294967295"]),
    (["chat", "--seed", str(2**32)], ["--seed", "seed: must be between 0 and 4294967295"]),
    (["chat", "--top-k", "-1"], ["--top-k", "top_k: must be >= 0"]),
])
def test_sampling_and_merge_ranges(capsys, args, words):
    code, _, err = run_cli(capsys, args[0], "--model", NO_MODEL, *args[1:])
    one_error(code, err, *words)


@pytest.mark.parametrize("value", ["banana", "2.5GB", "0GB", "=-1GB", "2 GBs", HUGE])
def test_merge_max_shard_size_names_the_accepted_form(tmp_path, capsys, value):
    given = ["--max-shard-size" + value] if value.startswith("=") else ["--max-shard-size", value]
    code, _, err = run_cli(capsys, "merge", "--adapter", tmp_path / "a", "-o", tmp_path / "m", "--model", NO_MODEL,
                           *given)
    one_error(code, err, "--max-shard-size", "such as 2GB or 500MB")
    assert not (tmp_path / "m").exists()


def test_merge_max_shard_size_takes_what_transformers_reads():
    from transformers.utils.hub import convert_file_size_to_int

    for given, saved, size in [("2GB", "2GB", 2 * 10**9), ("500mb", "500MB", 500 * 10**6), ("1gib", "1GiB", 2**30)]:
        cfg = load_config(VERBS["merge"].target()[0], adapter=["a"], output="o", max_shard_size=given)
        assert cfg.max_shard_size == saved and convert_file_size_to_int(cfg.max_shard_size) == size


# ------------------------------------------------------------------ family: integers too large

@pytest.mark.parametrize("verb,flag", [("train", "--seed"), ("train", "--max-steps"), ("train", "--lora-rank"),
                                       ("infer", "--max-new-tokens"), ("infer", "--seed"),
                                       ("tokenize", "--max-seq-length")])
@pytest.mark.parametrize("value", [str(2**64), HUGE])
def test_huge_integers_are_one_line(tmp_path, capsys, verb, flag, value):
    args = train(tmp_path, "--dry-run") if verb == "train" else [verb, "--model", NO_MODEL]
    code, _, err = run_cli(capsys, *args, flag, value)
    one_error(code, err, flag, "characters" if value == HUGE else "64 bits")


# ------------------------------------------------------------------ where the value came from

def test_yaml_nan_inf_and_huge_name_file_and_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    for text, words in [("lora_rank: 4\nlearning_rate: .nan\n", ["c.yaml: learning_rate", "finite", "(line 2)"]),
                        ("max_grad_norm: .inf\n", ["c.yaml: max_grad_norm", "finite", "(line 1)"]),
                        ("lora_rank: 4\n\nseed: -1\n", ["c.yaml: seed: must be between 0", "(line 3)"]),
                        (f"lora_rank: 4\nseed: {HUGE}\n", ["c.yaml:2:", "5000 digits"])]:
        config.write_text(text)
        code, _, err = run_cli(capsys, *train(tmp_path, config))
        one_error(code, err, *words)


@pytest.mark.parametrize("where", ["before", "after"])
def test_overrides_are_checked_before_or_after_flags(tmp_path, capsys, where):
    overrides = ["lora_rank=4", "lora_alpha=nan"]
    args = train(tmp_path, "--dry-run")
    args = [args[0], *overrides, *args[1:]] if where == "before" else [*args, *overrides]
    code, _, err = run_cli(capsys, *args)
    one_error(code, err, "lora_alpha: must be a finite number", "override lora_alpha=nan")


def test_overrides_after_flags_reach_the_config(tmp_path, capsys, monkeypatch):
    """``key=value`` after flags (even between them, around the YAML file) sets the option."""
    import instructglm.train

    seen = []
    monkeypatch.setattr(instructglm.train, "train", lambda cfg: seen.append(cfg))
    (tmp_path / "c.yaml").write_text("lora_rank: 2\nlearning_rate: 0.1\n")
    code, _, err = run_cli(capsys, "train", "--dataset", "d", "lora_rank=16", tmp_path / "c.yaml", "-o", "o",
                           "seed=7", "--lora-alpha", "4", "pre_seq_len=3", "--learning-rate", "0.5")
    assert code == 0, err
    (cfg,) = seen
    assert (cfg.lora.rank, cfg.seed, cfg.ptuning.pre_seq_len, cfg.lora.alpha) == (16, 7, 3, 4.0)
    assert cfg.optimizer.learning_rate == 0.5  # flags win over the file


def test_two_config_files_are_refused(tmp_path, capsys):
    code, _, err = run_cli(capsys, *train(tmp_path, "a.yaml", "lora_rank=4", "b.yaml"))
    one_error(code, err, "one YAML config file", "a.yaml, b.yaml")


@pytest.mark.slow
def test_through_a_real_process(tmp_path):
    """The installed command: huge seed in --dry-run, a YAML .nan, merge --max-shard-size banana."""
    (tmp_path / "c.yaml").write_text("weight_decay: .nan\n")
    for args, words in [(["train", "--dataset", "d", "-o", "o", "--dry-run", "--seed", str(2**40)], "--seed"),
                        (["train", str(tmp_path / "c.yaml"), "--dataset", "d", "-o", "o"], "c.yaml: weight_decay"),
                        (["merge", "--adapter", "a", "-o", "m", "--max-shard-size", "banana"], "--max-shard-size")]:
        p = subprocess.run([sys.executable, "-m", "instructglm", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300)
        one_error(p.returncode, p.stderr, words)
        assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


# ------------------------------------------------------------------ the layer itself

def test_help_shows_the_ranges(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "peak learning rate (default: 0.0002; > 0)" in text
    assert "(default: 42; between 0 and 4294967295)" in text


def test_range_words():
    assert [str(r) for r in (Range(min=1), Range(min=0), Range(above=0), Range(min=0, below=1), Range(above=0, max=1),
                             Range(min=0, max=2**32 - 1), Range(max=3), Range(below=2.5), Range())] == [
        "at least 1", ">= 0", "> 0", "in [0, 1)", "in (0, 1]", "between 0 and 4294967295", "<= 3", "< 2.5", ""]


def test_a_field_may_allow_non_finite_values():
    @dataclasses.dataclass
    class C:
        limit: float = opt(math.inf, help="x", min=0, finite=False)
        ratio: float = opt(0.5, help="y")

    limit, ratio = dataclasses.fields(C)
    assert number_problem(math.inf, limit) is None and number_problem(-1.0, limit) == "must be >= 0, got -1.0"
    assert number_problem(math.nan, ratio) == "must be a finite number, got nan"
    assert load_config(C, limit="inf").limit == math.inf
    with pytest.raises(UserError, match=r"ratio: must be a finite number, got nan \(flag --ratio\)"):
        load_config(C, ratio="nan")


def test_configs_built_in_code_are_checked_too():
    with pytest.raises(UserError, match="lora_alpha: must be a finite number"):
        LoraOptions(alpha=math.nan)
    with pytest.raises(UserError, match="seed: must be between 0 and 4294967295"):
        load_config(TrainConfig, dataset="d", output_dir="o", seed=2**32)
    with pytest.raises(SamplingError) as e:  # what serve turns into a 400 naming the request field
        SamplingConfig(temperature=1.0, top_p=1e-300)
    assert e.value.field == "top_p" and "between" in e.value.problem
    with pytest.raises(SamplingError, match="--temperature: must be a finite number"):
        SamplingConfig(temperature=math.inf)


def test_the_top_p_floor_still_samples_in_float32():
    """The smallest top_p allowed survives float32 and leaves the most likely token to draw; one below it
    (allowed before) becomes 0 there and leaves nothing."""
    import torch

    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]] * 2)
    temps = torch.tensor([1.0, 1.0])
    generator = torch.Generator().manual_seed(0)
    floor = torch.tensor([FLOAT32_TINY, 1.0], dtype=torch.float32)
    assert pick_next(logits, temps, floor, generator)[0].item() == 0
    assert SamplingConfig(temperature=1.0, top_p=FLOAT32_TINY).top_p == FLOAT32_TINY
    with pytest.raises(RuntimeError):
        pick_next(logits, temps, torch.tensor([1e-300, 1.0], dtype=torch.float32), generator)


def test_tiny_temperatures_do_not_overflow_generate():
    options = SamplingConfig(temperature=1e-300, top_p=0.9).generate_options()
    assert options["temperature"] >= 1e-5 and options["do_sample"]

