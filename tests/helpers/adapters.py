"""Adapters made in tests: a LoRA adapter with random weights, and a model rewired to say a fixed text."""

import json

import torch


def make_adapter(base_dir, out_dir, seed):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(out_dir)
    (out_dir / "instructglm.json").write_text(json.dumps({"base_model": str(base_dir), "method": "lora",
                                                          "template": "alpaca"}))
    return str(out_dir)


def wire_chain(model, tok, text="Paris. ### Instruction:"):
    """Rewire a tiny llama so that, after a prompt ending in "### Response:\\n", greedy decoding writes
    ``text`` and then repeats it forever (each token's successor depends on that token only)."""
    prompt_end = tok("### Response:\n", add_special_tokens=False).input_ids[-1]
    chain = [prompt_end] + tok(text, add_special_tokens=False).input_ids
    assert len(set(chain)) == len(chain)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, (cur, nxt) in enumerate(zip(chain, chain[1:] + [chain[1]])):
            model.model.embed_tokens.weight[cur, k] = 1.0
            model.lm_head.weight[nxt, k] = 10.0
    return chain
