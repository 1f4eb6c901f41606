"""Control tokens on a tokenizer built in the test; embedding initialisation."""

from __future__ import annotations

import torch
from conftest import make_model

from parallel_reason.format import ALL_TAGS, CONTROL_TAGS, RESULT
from parallel_reason.tiny import build_tokenizer
from parallel_reason.tokens import _name_ids, add_control_tokens, missing_tags, tag_token_ids


def _base_tokenizer():
    corpus = ["Numbers 1 2 3 Target Answer Parallel Thread Outline Outlines < / >"] * 20
    return build_tokenizer(corpus, vocab_size=300)


def test_adds_single_tokens_idempotently():
    tok = _base_tokenizer()
    assert set(missing_tags(tok)) == set(CONTROL_TAGS)
    n0 = len(tok)
    added = add_control_tokens(tok)
    assert added == list(ALL_TAGS)  # the required tags, then the optional <Result>
    assert len(tok) == n0 + len(ALL_TAGS)
    for tag in ALL_TAGS:
        ids = tok(f"x{tag}y", add_special_tokens=False)["input_ids"]
        assert tok.convert_tokens_to_ids(tag) in ids
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    assert add_control_tokens(tok) == []
    assert len(tok) == n0 + len(ALL_TAGS)
    # tags are not special: skip_special_tokens keeps them (TRL decodes that way)
    text = "a <Parallel>\n<Outlines><Outline>1: p</Outline></Outlines>\n<Thread>1: q<Result>r</Thread>\n</Parallel>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_result_tag_is_optional():
    """A tokenizer saved before <Result> existed still decodes (the tag is optional)."""
    from transformers import AddedToken

    tok = _base_tokenizer()
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CONTROL_TAGS])
    assert missing_tags(tok) == [] and RESULT not in tag_token_ids(tok)
    assert add_control_tokens(tok) == [RESULT]
    assert set(tag_token_ids(tok)) == set(ALL_TAGS)


def test_resize_and_init_rows_untied():
    tok = _base_tokenizer()
    model = make_model(tok, tie_word_embeddings=False)
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    n_old = old_in.shape[0]
    name_ids = {t: _name_ids(tok, t) for t in ALL_TAGS}
    add_control_tokens(tok, model, pad_to_multiple_of=64)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] % 64 == 0 and emb.shape[0] >= len(tok)
    assert torch.equal(emb[:n_old], old_in), "existing rows must be untouched"
    for tag, tid in tag_token_ids(tok).items():
        src = name_ids[tag]
        assert len(src) >= 2
        assert torch.allclose(emb[tid], old_in[src].mean(0), atol=1e-6)
        assert torch.allclose(model.get_output_embeddings().weight[tid], old_out[src].mean(0), atol=1e-6)
    # a second call changes nothing
    before = emb.detach().clone()
    assert add_control_tokens(tok, model) == []
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_tied_embeddings():
    tok = _base_tokenizer()
    model = make_model(tok, tie_word_embeddings=True)
    add_control_tokens(tok, model)
    tid = tok.convert_tokens_to_ids("<Thread>")
    assert torch.equal(model.get_input_embeddings().weight[tid], model.get_output_embeddings().weight[tid])


def test_load_tokenizer_keeps_whole_numbers(tmp_path):
    """A tokenizer trained with whole-number pieces loads with them (transformers would
    rebuild a Qwen2 tokenizer with its own digit-splitting pre-tokenizer)."""
    from parallel_reason.tiny import build_tiny
    from parallel_reason.tokens import load_tokenizer

    corpus = [f"Numbers: {a} {a + 7} {a * 3}\nTarget: {a + 20}\n{a}+7={a + 7}" for a in range(1, 60)] * 3
    tok, _ = build_tiny(corpus, tmp_path / "m", vocab_size=400, split_digits=False, hidden_size=32, layers=1)
    text = "Numbers: 12 19 36\nTarget: 32\n12+7=19"
    loaded = load_tokenizer(str(tmp_path / "m"))
    assert loaded.tokenize(text) == tok.tokenize(text)
    assert "19" in loaded.tokenize(text)  # a frequent number is one token
    assert loaded.decode(loaded(text)["input_ids"]) == text
    digits, _ = build_tiny(corpus, tmp_path / "d", vocab_size=400, hidden_size=32, layers=1)
    assert "19" not in load_tokenizer(str(tmp_path / "d")).tokenize(text)
