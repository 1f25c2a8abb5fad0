"""Names and numbers every stage agrees on, defined once."""

# Label of a position that is not trained (prompt tokens, padding): the value PyTorch's
# cross-entropy and transformers' losses skip.
IGNORE_INDEX = -100

# Files beside a training result, and who owns each (see the module named).
RUN_INFO = "instructglm.json"        # instructglm.runinfo: base model, method, template, tokenizer
TRAIN_CONFIG = "train_config.yaml"   # instructglm.train: the fully resolved config
TRAINER_LOG = "trainer_log.jsonl"    # instructglm.train: one line per logging/eval step
LOSS_PLOT = "loss.png"
COMPLETE = ".complete"               # written last into a finished checkpoint or prepared model

# Files of a tokenized dataset (owner: instructglm.tokenize.manifest).
MANIFEST = "manifest.json"
STATS = "stats.json"

# The template used when neither the user nor a trained adapter names one.
DEFAULT_TEMPLATE = "alpaca"
