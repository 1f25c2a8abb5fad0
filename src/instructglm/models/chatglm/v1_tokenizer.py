"""The ChatGLM-6B (v1) tokenizer: ``ice_text.model`` (sentencepiece) behind the transformers interface.

What makes it differ from a plain sentencepiece tokenizer, reproduced from the original:

* every sentencepiece id is shifted by ``num_image_tokens`` (20000 by default, 0 in the last
  official revision's tokenizer_config.json); ids below the shift are GLM's image tokens;
* before sentencepiece sees the text, newlines become ``<n>``, tabs ``<|tab|>`` and runs of 2..80
  spaces ``<|blank_N|>`` (longest first), all single pieces of the model; decoding undoes it;
* inputs end with ``[gMASK] <sop>`` (a pair: ``a [gMASK] <sop> b <eop>``), padding goes on the left.

It is a slow (Python) tokenizer on purpose: a fast one would need the 80 whitespace rewrites as
normalizer rules plus a re-numbered vocabulary, and a converted unigram model with byte fallback
is not guaranteed to segment exactly like sentencepiece; exact ids matter more than speed here.
"""

from __future__ import annotations

import os
import shutil

import sentencepiece as spm
from transformers import PreTrainedTokenizer

VOCAB_FILES_NAMES = {"vocab_file": "ice_text.model"}


class ChatGLMv1Tokenizer(PreTrainedTokenizer):
    vocab_files_names = VOCAB_FILES_NAMES
    # The original also returns a 3-D boolean mask and [2, s] position ids from its own padding;
    # here the model derives both from input_ids and a plain 2-D mask (see v1_masks).
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, num_image_tokens: int = 20000, max_blank_length: int = 80,
                 bos_token="<sop>", eos_token="<eop>", end_token="</s>", mask_token="[MASK]",
                 gmask_token="[gMASK]", pad_token="<pad>", unk_token="<unk>", remove_space: bool = False,
                 do_lower_case: bool = False, padding_side: str = "left", **kwargs):
        self.vocab_file = vocab_file
        self.sp = spm.SentencePieceProcessor(model_file=vocab_file)
        self.num_image_tokens = int(num_image_tokens)
        self.max_blank_length = max_blank_length
        self.remove_space, self.do_lower_case = remove_space, do_lower_case
        # Kept out of super().__init__ (which would make any "*_token" a special token that splits
        # the text): as in the original, "[gMASK]" typed in text is left to sentencepiece, where it
        # is a single piece, and the text around it is not split.
        # (from_pretrained turns such config keys into "model_specific_special_tokens": take them back.)
        named = dict(kwargs.pop("model_specific_special_tokens", None) or {})
        self.gmask_token = str(named.pop("gmask_token", gmask_token))
        self.end_token = str(named.pop("end_token", end_token))
        if named:
            kwargs["model_specific_special_tokens"] = named
        self._vocab_cache: dict[str, int] | None = None
        kwargs.pop("auto_map", None)
        kwargs.setdefault("clean_up_tokenization_spaces", False)
        super().__init__(bos_token=bos_token, eos_token=eos_token, mask_token=mask_token, pad_token=pad_token,
                         unk_token=unk_token, padding_side=padding_side, num_image_tokens=self.num_image_tokens,
                         remove_space=remove_space,
                         do_lower_case=do_lower_case, **kwargs)
        self.init_kwargs.update(gmask_token=self.gmask_token, end_token=self.end_token)  # saved, reloaded

    # --- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.num_image_tokens + self.sp.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        if self._vocab_cache is None:  # 20k image names plus the pieces: build once
            self._vocab_cache = {self._convert_id_to_token(i): i for i in range(self.vocab_size)}
        return dict(self._vocab_cache, **self.added_tokens_encoder)

    def _convert_token_to_id(self, token: str) -> int:
        if token.startswith("<image_") and token.endswith(">") and token[7:-1].isdigit():
            return int(token[7:-1])
        return self.sp.piece_to_id(token) + self.num_image_tokens

    def _convert_id_to_token(self, index: int) -> str:
        if index < self.num_image_tokens:
            return f"<image_{index}>"
        return self.sp.id_to_piece(index - self.num_image_tokens)

    @property
    def gmask_token_id(self) -> int:
        return self._convert_token_to_id(self.gmask_token)

    # --- text <-> pieces --------------------------------------------------------------------
    def _rewrite_whitespace(self, text: str) -> str:
        text = text.replace("\n", "<n>").replace("\t", "<|tab|>")
        for n in range(self.max_blank_length, 1, -1):  # longest first, so 5 spaces never become 2+3
            text = text.replace(" " * n, f"<|blank_{n}|>")
        return text

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        if self.remove_space:
            text = " ".join(text.strip().split())
        if self.do_lower_case:
            text = text.lower()
        return self.sp.encode(self._rewrite_whitespace(text), out_type=str)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        pieces = [t for t in tokens if not t.startswith("<image_")]  # image ids have no text
        text = self.sp.decode_pieces(pieces).replace("<n>", "\n").replace("<|tab|>", "\t")
        for n in range(2, self.max_blank_length + 1):
            text = text.replace(f"<|blank_{n}|>", " " * n)
        return text

    def _decode(self, token_ids, skip_special_tokens: bool = False, **kwargs) -> str:
        ids = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        ids = [i for i in ids if i != self.pad_token_id]  # padding never shows in text, as in the original
        return super()._decode(ids, skip_special_tokens=skip_special_tokens, **kwargs)

    # --- model inputs -----------------------------------------------------------------------
    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        ids = list(token_ids_0) + [self.gmask_token_id, self.bos_token_id]
        if token_ids_1 is not None:
            ids += list(token_ids_1) + [self.eos_token_id]
        return ids

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            special = {self.gmask_token_id, self.bos_token_id, self.eos_token_id, self.pad_token_id,
                       self.mask_token_id}
            return [int(i in special) for i in token_ids_0]
        mask = [0] * len(token_ids_0) + [1, 1]
        if token_ids_1 is not None:
            mask += [0] * len(token_ids_1) + [1]
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        return [0] * len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1))

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        name = (filename_prefix + "-" if filename_prefix else "") + VOCAB_FILES_NAMES["vocab_file"]
        out = os.path.join(save_directory, name) if os.path.isdir(save_directory) else save_directory
        if os.path.abspath(self.vocab_file) != os.path.abspath(out):
            shutil.copyfile(self.vocab_file, out)
        return (out,)
