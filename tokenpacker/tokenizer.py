"""The LLaMA sentencepiece tokenizer, with the exact semantics of transformers' slow `LlamaTokenizer`.

The released checkpoints ship only `tokenizer.model` (+ `tokenizer_config.json`), and the reference code
loads it with `use_fast=False`. Reproducing that behaviour directly on `sentencepiece` keeps token ids
identical to the reference, including the two details that matter for TokenPacker:
- `convert_tokens_to_ids("\\n")` is `<unk>` (0): "\\n" is not a piece, text newlines use byte fallback;
- `legacy` (the default when the config does not say otherwise) adds sentencepiece's dummy prefix to
  every text chunk, including the chunk that follows the image placeholder.
"""

import io
import json
from pathlib import Path

import sentencepiece as spm

from .configuration import IMAGE_TOKEN_INDEX
from .errors import ModelNotFoundError

SPIECE_UNDERLINE = "\u2581"
IMAGE_PLACEHOLDER = "<image>"


def _token_text(value) -> str | None:
    """special_tokens_map / tokenizer_config store tokens as strings or AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class LlamaTokenizer:
    def __init__(self, model_file: str | Path, legacy: bool = True, add_bos_token: bool = True,
                 add_eos_token: bool = False, added_tokens: dict[str, int] | None = None):  # fmt: skip
        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.legacy = legacy
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.bos_token_id, self.eos_token_id, self.unk_token_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.bos_token, self.eos_token, self.unk_token = (
            self.sp.id_to_piece(i) for i in (self.bos_token_id, self.eos_token_id, self.unk_token_id)
        )
        self.added_tokens = dict(added_tokens or {})
        # Text is split at these strings before sentencepiece sees it, as the slow tokenizer does.
        self._no_split = sorted({self.bos_token, self.eos_token, self.unk_token, *self.added_tokens}, key=len, reverse=True)
        if not legacy:
            self._sp_no_prefix = self._without_dummy_prefix()
            self._unk_length = len(self._sp_no_prefix.encode(self.unk_token, out_type=str))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "LlamaTokenizer":
        directory = Path(directory)
        model_file = directory / "tokenizer.model"
        if not model_file.is_file():
            raise ModelNotFoundError(f"no sentencepiece tokenizer: {model_file} does not exist")
        config = {}
        if (directory / "tokenizer_config.json").is_file():
            config = json.loads((directory / "tokenizer_config.json").read_text())
        added = {}
        if (directory / "added_tokens.json").is_file():
            added = json.loads((directory / "added_tokens.json").read_text())
        for token_id, token in (config.get("added_tokens_decoder") or {}).items():
            content = _token_text(token)
            if content is not None and int(token_id) >= spm.SentencePieceProcessor(model_file=str(model_file)).get_piece_size():
                added[content] = int(token_id)
        legacy = config.get("legacy")
        return cls(
            model_file,
            legacy=True if legacy is None else bool(legacy),
            add_bos_token=config.get("add_bos_token", True),
            add_eos_token=config.get("add_eos_token", False),
            added_tokens=added,
        )

    @classmethod
    def train(cls, lines: list[str], directory: str | Path, vocab_size: int = 400, **options) -> "LlamaTokenizer":
        """Train a LLaMA-style tokenizer (BPE, byte fallback, digits split, <unk>=0 <s>=1 </s>=2, identity
        normalisation, dummy prefix) on `lines` and save it as `directory`/tokenizer.model. The model is written
        through `model_writer`, so the file does not record `directory` (sentencepiece would keep a `model_prefix`
        path in it): the same lines give the same bytes wherever they are saved."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, model_type="bpe",
            vocab_size=vocab_size, byte_fallback=True, split_digits=True, character_coverage=1.0,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, normalization_rule_name="identity",
            add_dummy_prefix=True, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
            minloglevel=2, **options,
        )  # fmt: skip
        (directory / "tokenizer.model").write_bytes(model.getvalue())
        tokenizer = cls(directory / "tokenizer.model")
        tokenizer.save_pretrained(directory)
        return tokenizer

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tokenizer.model").write_bytes(self.model_file.read_bytes())
        config = {"tokenizer_class": "LlamaTokenizer", "legacy": self.legacy, "add_bos_token": self.add_bos_token,
                  "add_eos_token": self.add_eos_token, "bos_token": self.bos_token, "eos_token": self.eos_token,
                  "unk_token": self.unk_token, "clean_up_tokenization_spaces": False}  # fmt: skip
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if self.added_tokens:
            (directory / "added_tokens.json").write_text(json.dumps(self.added_tokens, indent=2) + "\n")

    def _without_dummy_prefix(self) -> spm.SentencePieceProcessor:
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto.FromString(self.model_file.read_bytes())
        proto.normalizer_spec.add_dummy_prefix = False
        return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())

    def __len__(self) -> int:
        return self.sp.get_piece_size() + len(self.added_tokens)

    # -- text -> ids ------------------------------------------------------------------------------------
    def _split_special(self, text: str) -> list[str]:
        """Split at special/added token strings (longest first), keeping them as separate items."""
        pieces, start, i = [], 0, 0
        while i < len(text):
            match = next((tok for tok in self._no_split if text.startswith(tok, i)), None)
            if match is None:
                i += 1
                continue
            if i > start:
                pieces.append(text[start:i])
            pieces.append(match)
            i += len(match)
            start = i
        if start < len(text):
            pieces.append(text[start:])
        return pieces

    def _encode_chunk(self, chunk: str) -> list[str]:
        if self.legacy:
            return self.sp.encode(chunk, out_type=str)
        if not chunk.startswith((SPIECE_UNDERLINE, " ")):
            return self._sp_no_prefix.encode(chunk, out_type=str)
        pieces = self._sp_no_prefix.encode(self.unk_token + chunk, out_type=str)
        return pieces[self._unk_length :] if len(pieces) >= self._unk_length else pieces

    def tokenize(self, text: str) -> list[str]:
        if not text:
            return []
        if not self.legacy:
            text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        tokens = []
        for piece in self._split_special(text):
            tokens += [piece] if piece in self._no_split else self._encode_chunk(piece)
        if not self.legacy and len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self._no_split:
            tokens = tokens[1:]
        return tokens

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.added_tokens.get(tokens, self.sp.piece_to_id(tokens))
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        if add_special_tokens and self.add_bos_token:
            ids = [self.bos_token_id] + ids
        if add_special_tokens and self.add_eos_token:
            ids = ids + [self.eos_token_id]
        return ids

    def encode_with_image(self, prompt: str) -> list[int]:
        """LLaVA's `tokenizer_image_token`: tokenize the chunks around `<image>` separately (each as a full
        text, so each gets the dummy prefix), keep a single BOS, and put IMAGE_TOKEN_INDEX between them."""
        chunks = [self.encode(chunk) for chunk in prompt.split(IMAGE_PLACEHOLDER)]
        offset = 1 if chunks and chunks[0] and chunks[0][0] == self.bos_token_id else 0
        ids = chunks[0][:1] if offset else []
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(IMAGE_TOKEN_INDEX)
            ids += chunk[offset:]
        return ids

    # -- ids -> text ------------------------------------------------------------------------------------
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`; sentencepiece decodes runs of ordinary pieces, specials are skipped or spelled out."""
        special = {self.bos_token_id, self.eos_token_id, self.unk_token_id}
        vocab = self.sp.get_piece_size()
        parts, run = [], []
        for i in ids:
            if 0 <= i < vocab and i not in special:
                run.append(i)
                continue
            parts.append(self.sp.decode(run))
            run = []
            if i >= vocab or (i >= 0 and not skip_special_tokens):
                parts.append(self.id_to_piece(i))
        parts.append(self.sp.decode(run))
        return "".join(parts)

    def id_to_piece(self, token_id: int) -> str:
        if token_id >= self.sp.get_piece_size():
            return {i: t for t, i in self.added_tokens.items()}.get(token_id, "")
        return self.sp.id_to_piece(token_id)
