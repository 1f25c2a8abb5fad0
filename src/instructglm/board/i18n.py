"""The board's words in English and Chinese. The page looks every label up here by key
(``data-i18n="key"``); an option's help text is ``help.KEY`` (falling back to the dataclass's own
English help where no translation is written yet) and a group's title ``group.NAME``."""

from __future__ import annotations

_PAIRS = {
    "title": ("InstructGLM Board", "InstructGLM 控制台"),
    "tab.data": ("Data", "数据"), "tab.train": ("Train", "训练"), "tab.runs": ("Runs", "运行记录"),
    "tab.chat": ("Chat", "对话"), "tab.eval": ("Evaluate", "评估"), "tab.export": ("Export", "导出"),
    "lang": ("中文", "English"),
    "workdir": ("Work directory", "工作目录"),
    "command": ("Command", "命令"), "commands": ("Commands run", "执行的命令"),
    "copy": ("Copy", "复制"), "copied": ("copied", "已复制"),
    "error": ("Error", "错误"), "busy": ("working…", "处理中…"),
    # data
    "data.intro": ("Upload a data file (JSON or JSONL in any format convert reads) or give the path of one; "
                   "the board converts and tokenizes it.",
                   "上传数据文件（convert 支持的任意格式的 JSON 或 JSONL），或填写文件路径；控制台会转换并分词。"),
    "data.file": ("Data file", "数据文件"), "data.path": ("…or a path on this machine", "…或本机上的路径"),
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
    "train.eta": ("ETA", "预计剩余"), "train.required": ("required", "必填"), "train.default": ("default", "默认"),
    # runs
    "runs.name": ("Run", "运行"), "runs.status": ("Status", "状态"), "runs.steps": ("Steps", "步数"),
    "runs.loss": ("Last loss", "最新损失"), "runs.checkpoints": ("Checkpoints", "检查点"),
    "runs.compare": ("Loss curves", "损失曲线"), "runs.report": ("report", "报告"), "runs.empty": ("No runs yet.",
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
    "eval.start": ("Run evaluation", "开始评估"), "eval.metrics": ("Metrics", "指标"), "eval.metric": ("metric",
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
    # errors the page itself makes
    "err.no_file": ("choose a file or give a path", "请选择文件或填写路径"),
    "err.network": ("the board did not answer", "控制台没有响应"),
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
