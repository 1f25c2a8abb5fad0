"""The board's words in English and Chinese. The page looks every label up here by key
(``data-i18n="key"``); an option's help text is ``help.KEY`` (falling back to the dataclass's own
English help where no translation is written yet) and a group's title ``group.NAME``."""

from __future__ import annotations

# The metrics of `instructglm eval` (keys of metrics.json): a label and what it measures.
METRIC_PAIRS = {
    "metric.exact_match": ("Exact match", "完全匹配"),
    "metric_help.exact_match": ("answers equal to the reference (spaces at the ends ignored; case and punctuation "
                                "count)", "与参考答案完全相同的回答所占比例（忽略首尾空白；大小写和标点计入）"),
    "metric.normalized_exact_match": ("Exact match, normalised", "完全匹配（归一化）"),
    "metric_help.normalized_exact_match": ("as exact match, also ignoring case, punctuation at the ends and inner "
                                           "spacing", "同完全匹配，但还忽略大小写、首尾标点和内部空白"),
    "metric.char_f1": ("Character F1", "字符 F1"),
    "metric_help.char_f1": ("overlap of the answer's and the reference's characters (F1); needs no word "
                            "segmentation, so it treats Chinese and English alike",
                            "回答与参考答案的字符重合度（F1）；无需分词，中英文同样适用"),
    "metric.bleu4": ("BLEU-4", "BLEU-4"),
    "metric_help.bleu4": ("n-gram precision up to 4-grams (sacrebleu; words for English rows, characters for "
                          "Chinese rows)", "最多 4 元组的 n-gram 精确率（sacrebleu；英文按词，中文按字）"),
    "metric.rouge1": ("ROUGE-1", "ROUGE-1"),
    "metric_help.rouge1": ("overlap of single words (characters in Chinese), F-measure",
                           "单个词（中文为单字）的重合度，F 值"),
    "metric.rouge2": ("ROUGE-2", "ROUGE-2"),
    "metric_help.rouge2": ("overlap of word pairs (character pairs in Chinese), F-measure",
                           "相邻两个词（中文为两个字）的重合度，F 值"),
    "metric.rougeL": ("ROUGE-L", "ROUGE-L"),
    "metric_help.rougeL": ("longest common subsequence of answer and reference, F-measure",
                           "回答与参考答案的最长公共子序列，F 值"),
    "metric.accuracy": ("Preference accuracy", "偏好准确率"),
    "metric_help.accuracy": ("pairs where the model prefers the chosen answer to the rejected one",
                             "模型认为 chosen 回答优于 rejected 回答的样本对比例"),
    "metric.mean_margin": ("Mean margin", "平均差值"),
    "metric_help.mean_margin": ("mean log-probability margin of chosen over rejected (not a %)",
                                "chosen 相对 rejected 的平均对数概率差（不是百分比）"),
}

# Errors. `err.KEY`: the board's own messages, templates the page fills with the error's params (a param
# named "what" is itself a key here). `why.KIND`: what a kind of CLI error means, shown above the CLI's own
# line, which names the file, line or flag (board/messages.py finds the kind).
ERROR_PAIRS = {
    "err.no_file": ("choose a file or give a path", "请选择文件或填写路径"),
    "err.network": ("the board did not answer", "控制台没有响应"),
    "err.body_not_json": ("the request body is not JSON", "请求内容不是 JSON"),
    "err.body_not_object": ("the request body must be a JSON object", "请求内容必须是 JSON 对象"),
    "err.output_dir": ("--output-dir {given}: the board runs and watches training runs in {runs}/NAME; choose a "
                       "directory there", "--output-dir {given}：控制台只在 {runs}/名称 下运行和查看训练；请选择那里的目录"),
    "err.no_checkpoint": ("{run}: no finished checkpoint to resume from", "{run}：没有可续训的完整检查点"),
    "err.not_finished": ("{run}: not a finished training run (no instructglm.json)",
                         "{run}：不是已完成的训练运行（没有 instructglm.json）"),
    "err.not_shown": ("{file}: not a file the board shows", "{file}：控制台不显示此文件"),
    "err.not_written": ("{path}: not written yet", "{path}：尚未生成"),
    "err.chat_not_loaded": ("start the chat model first (Load)", "请先启动对话模型（点“加载”）"),
    "err.whole_number": ("{key}: expected a whole number, got {value}", "{key}：需要整数，实际为 {value}"),
    "err.no_such_file": ("{path}: no such file", "{path}：文件不存在"),
    "err.no_such_data_file": ("{path}: no such data file", "{path}：数据文件不存在"),
    "err.train_queued": ("{target}: a training job for this run is already queued or running",
                         "{target}：该运行已有训练任务在排队或运行"),
    "err.job_not_running": ("job {job} is not running (it is {status})", "任务 {job} 没有在运行（状态：{status}）"),
    "err.no_job": ("no job {job}", "没有任务 {job}"),
    "err.bad_name": ("{what} '{name}': use letters, digits, '.', '_' and '-' (at most 80, not starting with '.' "
                     "or '-')", "{what}“{name}”：只能使用字母、数字、“.”、“_”和“-”（最多 80 个，不能以“.”或“-”开头）"),
    "what.run": ("run name", "运行名称"), "what.file": ("file name", "文件名"),
    "what.dataset": ("dataset name", "数据集名称"), "what.eval": ("evaluation name", "评估名称"),
    "what.export": ("export name", "导出名称"), "what.adapter": ("adapter", "适配器"),
    "err.too_large": ("{name}: larger than {mb} MB; put it in the work directory and give its path",
                      "{name}：超过 {mb} MB；请把它放到工作目录中并填写路径"),
    "err.timeout": ("{command}: no answer within {seconds} s", "{command}：{seconds} 秒内没有结束"),
    "err.exit_status": ("{command}: ended with exit status {code} without an error line; its last output:\n{tail}",
                        "{command}：以退出码 {code} 结束，没有给出错误行；最后的输出：\n{tail}"),
    "err.job_crashed": ("{command}: ended with exit status {code} without an error line; the log below shows why",
                        "{command}：以退出码 {code} 结束，没有给出错误行；原因见下方日志"),
    "err.unknown_options": ("unknown option(s): {keys}", "未知选项：{keys}"),
    "err.value_required": ("{flag}: a value is required", "{flag}：必须填写"),
    "err.not_understood": ("instructglm train: the options were not understood: {args}",
                           "instructglm train：无法解析这些选项：{args}"),
    "err.server_timeout": ("{command}: the server did not start within {seconds} s",
                           "{command}：服务器在 {seconds} 秒内没有启动"),
    "err.server_stopped": ("{command}: the server stopped (exit status {code}): {tail}",
                           "{command}：服务器已退出（退出码 {code}）：{tail}"),
    "err.server_unreachable": ("the chat model server did not answer: {detail}", "对话模型服务器没有响应：{detail}"),
    "err.token": ("a board token is needed: open the address the board printed (…/?token=…)",
                  "需要控制台令牌：请打开控制台启动时打印的地址（…/?token=…）"),
    "err.internal": ("internal error in the board ({detail}); the board's terminal has the details",
                     "控制台内部错误（{detail}）；详情见运行控制台的终端"),
    "why.head": ("The command's own line:", "命令的原始输出："),
    "why.out_of_memory": ("The GPU ran out of memory. The line below lists the settings that lower memory use, "
                          "with their current values.", "显存不足。下面这行列出了能降低显存占用的设置及其当前值"
                          "（如减小每设备批大小、增大梯度累积步数、缩短最大长度）。"),
    "why.checkpoint": ("The checkpoint or trained weights do not match this run (another model, tokenizer or "
                       "settings), or the checkpoint is damaged. Resume with the settings it was trained with, choose "
                       "another output directory, or resume from an earlier checkpoint.",
                       "检查点或已训练的权重与本次运行不匹配（模型、分词器或设置不同），或检查点已损坏。请用训练时的设置续训、"
                       "换一个输出目录，或从更早的检查点继续。"),
    "why.bad_json": ("A line of the file is not valid JSON (or YAML): FILE:LINE below says where. Fix that line and "
                     "try again.", "文件中有一行不是合法的 JSON（或 YAML）：下面的“文件:行号”指出了位置。修改该行后重试。"),
    "why.not_utf8": ("The file is not UTF-8 text. Save it as UTF-8 and try again.",
                     "文件不是 UTF-8 编码的文本。请另存为 UTF-8 后重试。"),
    "why.bad_record": ("The data does not hold the records this step needs (format not recognised, no rows left, or "
                       "another kind of data). The line below names the file and what was found.",
                       "数据中没有这一步需要的记录（无法识别格式、处理后没有剩余的行，或数据类型不对）。下面这行给出了文件和"
                       "发现的情况。"),
    "why.not_regular": ("The path is not a regular file (a device, FIFO or socket). Save the data to a file first.",
                        "该路径不是普通文件（而是设备、FIFO 或套接字）。请先把数据保存为文件。"),
    "why.is_directory": ("A directory was given where a file is needed. Give the path of a file.",
                         "这里需要文件，但给出的是目录。请填写文件的路径。"),
    "why.not_found": ("A file or directory was not found. Check the path (a path on the machine the board runs "
                      "on).", "找不到文件或目录。请检查路径（指运行控制台的这台机器上的路径）。"),
    "why.unknown_key": ("An option or field name is not known. The line below names it (and close names, if any).",
                        "选项或字段名未知。下面这行给出了该名称（如有相近的名称也会列出）。"),
    "why.missing_value": ("A required option has no value.", "必填选项没有填写。"),
    "why.bad_value": ("An option has a value of the wrong type or out of range. The line below names the option "
                      "(--flag or key) and the value.", "某个选项的值类型不对或超出范围。下面这行给出了选项（--参数或"
                      "键名）和所填的值。"),
    "why.not_a_run": ("The directory is not what this step needs (a finished training run, a model or a tokenized "
                      "dataset).", "该目录不是这一步需要的内容（已完成的训练运行、模型或分词后的数据集）。"),
    "why.output": ("The output cannot be written there (it exists, is in use or is not writable). Choose another "
                   "output path.", "无法写入该输出位置（已存在、正被使用或不可写）。请换一个输出路径。"),
    "why.model": ("The model or tokenizer cannot be loaded or used this way.", "无法以这种方式加载或使用该模型或分词器。"),
    "why.other": ("The command reported an error; its own line follows.", "命令报告了一个错误，原文如下。"),
}

_PAIRS = {
    "title": ("InstructGLM Board", "InstructGLM 控制台"),
    "tab.data": ("Data", "数据"), "tab.train": ("Train", "训练"), "tab.runs": ("Runs", "运行记录"),
    "tab.chat": ("Chat", "对话"), "tab.eval": ("Evaluate", "评估"), "tab.export": ("Export", "导出"),
    "lang": ("中文", "English"),
    "workdir": ("Work directory:", "工作目录："),
    "command": ("Command", "命令"), "commands": ("Commands run", "执行的命令"),
    "copy": ("Copy", "复制"), "copied": ("copied", "已复制"),
    "error": ("Error: ", "错误："), "busy": ("working…", "处理中…"),
    # data
    "data.intro": ("Upload a data file (JSON or JSONL in any format convert reads) or give the path of one; "
                   "the board converts and tokenizes it.",
                   "上传数据文件（convert 支持的任意格式的 JSON 或 JSONL），或填写文件路径；控制台会转换并分词。"),
    "data.file": ("Data file", "数据文件"), "data.choose": ("Choose a file…", "选择文件…"),
    "data.no_file": ("no file chosen", "未选择文件"), "data.path": ("…or a path on this machine", "…或本机上的路径"),
    "data.name": ("Dataset name", "数据集名称"), "data.model": ("Model (its tokenizer)", "模型（使用其分词器）"),
    "data.template": ("Template", "模板"), "data.max_len": ("Max tokens per row", "每行最大 token 数"),
    "data.prepare": ("Convert and tokenize", "转换并分词"),
    "data.format": ("Detected format", "检测到的格式"), "data.counts": ("Records", "记录数"),
    "data.converted": ("converted", "已转换"), "data.rejected": ("rejected", "被拒绝"),
    "data.duplicates": ("duplicates removed", "去除重复"), "data.rejects": ("Rejected records", "被拒绝的记录"),
    "data.lengths": ("Token lengths (rows per bin)", "token 长度分布（每段行数）"), "data.preview": ("Preview (trained span highlighted)",
                                                                     "预览（高亮部分参与训练）"),
    "data.use": ("Train on this dataset", "用此数据集训练"),
    "data.rows_out": ("rows written", "写入行数"), "data.rows_skipped": ("skipped (too long)", "跳过（过长）"),
    # train
    "train.preset": ("Preset", "预设"), "train.none": ("(none)", "（无）"),
    "train.command": ("Copy as command", "复制为命令"), "train.yaml": ("Resolved config (YAML)", "解析后的配置（YAML）"),
    "train.launch": ("Launch", "开始训练"), "train.stop": ("Stop", "停止"), "train.resume": ("Resume from latest",
                                                                                       "从最新检查点继续"),
    "train.status": ("Status", "状态"), "train.loss": ("Loss", "损失"), "train.lr": ("Learning rate", "学习率"),
    "train.log": ("Log", "日志"), "train.step": ("step", "步"), "train.tokens_s": ("tokens/s", "token/秒"),
    "train.eta": ("ETA", "预计剩余"), "train.required": ("required", "必填"), "train.default": (" (default: {value})", "（默认：{value}）"),
    # runs
    "runs.name": ("Run", "运行"), "runs.status": ("Status", "状态"), "runs.steps": ("Steps", "步数"),
    "runs.loss": ("Last loss", "最新损失"), "runs.checkpoints": ("Checkpoints", "检查点"),
    "runs.compare": ("Loss curves", "损失曲线"), "runs.report": ("Report", "报告"), "runs.empty": ("No runs yet.",
                                                                                            "还没有运行记录。"),
    "runs.open": ("open", "打开"), "runs.config": ("Config", "配置"),
    "runs.write_report": ("write report", "生成报告"),
    # chat
    "chat.model": ("Base model", "基础模型"), "chat.adapters": ("Adapters (trained runs)", "适配器（已训练的运行）"),
    "chat.load": ("Load", "加载"), "chat.send": ("Send", "发送"), "chat.prompt": ("Your message", "你的消息"),
    "chat.models": ("Answer with", "回答模型"), "chat.max_tokens": ("Max new tokens", "最大生成 token 数"),
    "chat.clear": ("Clear", "清空"), "chat.loaded": ("loaded", "已加载"),
    # eval
    "eval.run": ("Adapter (run)", "适配器（运行）"), "eval.base": ("(base model only)", "（仅基础模型）"),
    "eval.data": ("Data file with references", "带参考答案的数据文件"), "eval.limit": ("Only the first N rows",
                                                                                 "仅前 N 行"),
    "eval.start": ("Run evaluation", "开始评估"), "eval.metrics": ("Metrics", "指标"), "eval.metric": ("Metric",
                                                                                                 "指标"),
    "eval.compare_base": ("Also answer with the adapter off (base)", "同时关闭适配器作答（基础模型）"),
    # export
    "export.run": ("Finished run", "已完成的运行"), "export.gguf": ("Also write GGUF (llama.cpp, Ollama)",
                                                                   "同时导出 GGUF（llama.cpp、Ollama）"),
    "export.quant": ("GGUF weights", "GGUF 权重类型"), "export.start": ("Merge and export", "合并并导出"),
    "export.output": ("Output", "输出"),
    # statuses
    "status.running": ("running", "运行中"), "status.waiting": ("waiting", "排队中"), "status.done": ("done", "完成"),
    "status.finished": ("finished", "已完成"), "status.failed": ("failed", "失败"),
    "status.stopped": ("stopped", "已停止"), "status.lost": ("lost", "已丢失"), "status.ended": ("ended", "已结束"),
    "status.unknown": ("unknown", "未知"),
    # option groups and the most used options' help
    "group.general": ("General", "常规"), "group.lora": ("LoRA (method lora)", "LoRA（方法 lora）"),
    "group.ptuning": ("P-Tuning v2 (method ptuning)", "P-Tuning v2（方法 ptuning）"),
    "group.freeze": ("Freeze tuning (method freeze)", "冻结微调（方法 freeze）"),
    "group.optimizer": ("Optimizer and learning-rate schedule", "优化器与学习率调度"),
    "group.schedule": ("Batch size and steps", "批大小与步数"),
    "group.performance": ("Precision, packing, kernels", "精度、打包与算子"),
    "group.eval": ("Eval loss", "验证损失"), "group.checkpoints": ("Checkpoints, logs, resuming", "检查点、日志与续训"),
    "group.preference": ("Preference alignment (stage dpo, orpo, simpo or kto)", "偏好对齐（stage 为 dpo、orpo、simpo 或 kto）"),
    # progress and outputs of Evaluate and Export
    "progress.stage": ("step {i} of {n}: {name}", "第 {i}/{n} 步：{name}"),
    "progress.rows": ("{done} of {total} rows answered", "已回答 {done}/{total} 行"),
    "progress.elapsed": ("{s} s", "{s} 秒"), "progress.written": ("Written", "已写入"),
    "eval.legend": ("Scores are % (0–100), higher is better. base: the model with the adapter off · tuned: with "
                    "the adapter · Δ: tuned minus base, in points. Hover a metric for what it measures; the small "
                    "name is its key in metrics.json and in the CLI's output.",
                    "分数为百分比（0–100），越高越好。base：关闭适配器的基础模型 · tuned：加上适配器 · Δ：tuned 减 base 的"
                    "差值（百分点）。鼠标停在指标上可看说明；小字是它在 metrics.json 和命令行输出中的键名。"),
    **METRIC_PAIRS, **ERROR_PAIRS,
}

# Chinese help of the Train form's options (English: the dataclass's own help). An option added later
# shows its English help in the Chinese page until it is translated here.
HELP_ZH = {
    "dataset": "分词后的数据集目录（来自“数据”页或 instructglm tokenize）；多个目录用逗号分隔，合并训练",
    "output_dir": "训练权重、日志和检查点的保存位置",
    "model": "基础模型：内置名称、目录、.gguf 文件或 Hub ID",
    "method": "微调方法",
    "stage": "sft（指令微调）；pt（在 tokenize --stage pt 的纯文本上继续预训练）；或在分词后的偏好数据上做偏好对齐："
             "dpo、orpo、simpo（成对）或 kto",
    "tokenizer": "扩展了模型词表的分词器目录（只新增词元，例如 Chinese-LLaMA 合并后的分词器）；分词时使用同一选项",
    "add_tokens": "要加入模型分词器的新词元文件，每行一个；分词时使用同一选项",
    "trust_remote_code": "运行模型仓库自带的代码（旧版 ChatGLM-6B/2/3）",
    "load_in": "量化加载基础权重（bitsandbytes，仅 GPU）",
    "lora_rank": "LoRA 秩 r", "lora_alpha": "LoRA alpha（缩放 = alpha / r）", "lora_dropout": "LoRA 输入的 dropout",
    "lora_target": "要适配的模块：auto、all-linear 或逗号分隔的模块名（如 q_proj,v_proj）",
    "lora_modules_to_save": "除 LoRA 外完整训练的模块，逗号分隔（如 lm_head）",
    "lora_rslora": "秩稳定的 LoRA 缩放（alpha / sqrt(r)）", "lora_dora": "权重分解的 LoRA（DoRA）",
    "pre_seq_len": "P-Tuning v2 前缀长度（token 数）", "prefix_projection": "P-Tuning v2：用两层 MLP 生成前缀",
    "prefix_hidden_size": "P-Tuning v2 MLP 宽度（默认：模型隐藏层大小）",
    "freeze_trainable_layers": "冻结微调：训练最后 N 个块（负数表示前 N 个）",
    "freeze_modules": "冻结微调：这些块中训练哪一部分",
    "learning_rate": "峰值学习率", "weight_decay": "AdamW 权重衰减", "lr_scheduler": "预热后的学习率调度",
    "warmup_steps": "线性预热步数", "max_grad_norm": "梯度裁剪范数；0 表示不裁剪",
    "per_device_train_batch_size": "每个微批次的行数", "gradient_accumulation_steps": "每个优化步的微批次数",
    "max_steps": "训练的优化步数；-1 表示按 num_epochs", "num_epochs": "数据集训练轮数（max_steps 为 -1 时）",
    "packing": "把每个微批次的样本无填充地打包到共享行中（损失与不打包相同；不适用于 ptuning）",
    "pack_length": "打包行的最大 token 数（更长的样本单独成行）",
    "gradient_checkpointing": "反向传播时重算激活（省显存，约多三分之一计算）",
    "compile": "用 torch.compile 编译模型（GPU；编译期间前几步较慢）",
    "liger": "Liger Triton 算子：auto 表示在装有 liger-kernel 的 CUDA GPU 上使用",
    "precision": "auto：CPU 上 fp32，支持的 GPU 上 bf16（否则 fp16）；可训练权重保持 fp32",
    "fp16": "ChatGLM-Tuning 的开关：等同 precision=fp16",
    "seed": "数据顺序、dropout 和初始化的随机种子", "shuffle": "每轮打乱数据（关闭：按数据集顺序）",
    "val_size": "留出这一比例（< 1）或这么多行计算验证损失", "eval_dataset": "计算验证损失的分词后数据集目录",
    "eval_steps": "每 N 步计算一次验证损失（0：只在最后计算）",
    "save_steps": "每 N 步保存检查点；0 表示只在最后保存", "save_total_limit": "保留的检查点数；0 表示全部保留",
    "logging_steps": "每 N 步记录一次日志", "resume": "续训：latest 或检查点目录",
    "resume_anyway": "即使设置或数据与检查点不同也续训（会警告差异）",
    "stop_on_nan": "损失变为 NaN 或 inf 时报错停止",
    "beta": "dpo/kto：向参考模型靠拢的强度；simpo：奖励缩放；orpo：赔率比项的权重",
    "dpo_loss": "dpo：sigmoid（DPO）、ipo 或 hinge", "label_smoothing": "dpo（sigmoid）、simpo：假定标签被翻转的样本对比例",
    "gamma": "simpo：长度归一化后 chosen 与 rejected 奖励的目标间隔",
    "sft_weight": "dpo/simpo/kto：在损失中加上该权重 × chosen 回答的交叉熵",
    "desirable_weight": "kto：期望回答的损失权重", "undesirable_weight": "kto：不期望回答的损失权重",
    "precompute_ref": "dpo/kto：训练前一次性计算参考模型的对数概率并保存，训练时不再加载参考模型", "dry_run": "打印解析后的配置和可训练参数量，然后停止",
}

TEXTS = {"en": {k: v[0] for k, v in _PAIRS.items()},
         "zh": {**{k: v[1] for k, v in _PAIRS.items()}, **{"help." + k: v for k, v in HELP_ZH.items()}}}
