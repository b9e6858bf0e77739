import json

import pytest

from tokenpacker.configuration import IMAGE_TOKEN_INDEX
from tokenpacker.conversation import SYSTEM_PROMPT, Turn, build_prompt
from tokenpacker.errors import PromptError
from tokenpacker.tokenizer import LlamaTokenizer


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return LlamaTokenizer.from_pretrained(tokenizer_dir)


def test_special_ids_and_separators(tok):
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("\n") == 0  # not a piece: the <unk> embedding separates HD rows
    assert tok.convert_tokens_to_ids(",") not in (0, 1, 2)
    assert tok.id_to_piece(tok.convert_tokens_to_ids(",")) == ","


def test_byte_fallback(tok):
    pieces = tok.tokenize("a\nb é")
    assert "<0x0A>" in pieces  # a text newline is the byte piece, not <unk>
    assert {"<0xC3>", "<0xA9>"} <= set(pieces)  # é is not in the tiny vocabulary: its UTF-8 bytes
    assert tok.decode(tok.encode("a\nb é")) == "a\nb é"


def test_image_prompt_layout(tok):
    prompt = build_prompt([Turn("What is in the image?")])
    assert prompt == f"{SYSTEM_PROMPT} USER: <image>\nWhat is in the image? ASSISTANT:"
    ids = tok.encode_with_image(prompt)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
    at = ids.index(IMAGE_TOKEN_INDEX)
    before, after = prompt.split("<image>")
    assert ids[1:at] == tok.encode(before)[1:]
    assert ids[at + 1 :] == tok.encode(after)[1:]
    # Each chunk is tokenized as its own text: "\nWhat" gets sentencepiece's dummy prefix first.
    assert [tok.id_to_piece(i) for i in ids[at + 1 : at + 3]] == ["\u2581", "<0x0A>"]
    assert tok.id_to_piece(ids[at - 1]) == "\u2581"  # "... USER: " ends with the space piece


def test_multi_turn_prompt_and_legacy_spacing(tok, tokenizer_dir, tmp_path):
    turns = [Turn("What is in the image?", "a red circle"), Turn("How many objects are there?")]
    prompt = build_prompt(turns)
    assert prompt.endswith("ASSISTANT: a red circle</s>USER: How many objects are there? ASSISTANT:")
    legacy = tok.encode_with_image(prompt)
    eos_at = legacy.index(tok.eos_token_id)
    assert tok.id_to_piece(legacy[eos_at + 1]).startswith("\u2581")  # legacy: dummy prefix after </s>

    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    modern_dir = tmp_path / "modern"
    modern_dir.mkdir()
    (modern_dir / "tokenizer.model").write_bytes((tokenizer_dir / "tokenizer.model").read_bytes())
    (modern_dir / "tokenizer_config.json").write_text(json.dumps({**config, "legacy": False}))
    modern = LlamaTokenizer.from_pretrained(modern_dir).encode_with_image(prompt)
    assert not LlamaTokenizer.from_pretrained(modern_dir).id_to_piece(modern[modern.index(2) + 1]).startswith("\u2581")
    # Single-turn prompts are the same either way.
    single = build_prompt([Turn("What is in the image?")])
    assert LlamaTokenizer.from_pretrained(modern_dir).encode_with_image(single) == tok.encode_with_image(single)


def test_special_token_text_is_split(tok):
    ids = tok.encode("hi</s>there")
    assert tok.eos_token_id in ids


def test_prompt_errors():
    with pytest.raises(PromptError, match="reserved"):
        build_prompt([Turn("what is <image> here")])
    with pytest.raises(PromptError, match="no question"):
        build_prompt([])
    with pytest.raises(PromptError, match="last turn"):
        build_prompt([Turn("a"), Turn("b")])


def test_save_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = LlamaTokenizer.from_pretrained(tmp_path)
    text = build_prompt([Turn("What color is the square?", "red"), Turn("And the circle?")])
    assert again.encode_with_image(text) == tok.encode_with_image(text)
    assert len(again) == len(tok)
