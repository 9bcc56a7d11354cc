"""pyramid_jax.text: prompts from a config or file, prompt schedules, placeholder embeddings,
encoded prompts from .npy/.npz (padding and the one-line refusals), and the TextEncoder kinds
that need no umT5 weights."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from pyramid_jax import text
from pyramid_jax.config import base_config
from pyramid_jax.spec import from_config
from pyramid_jax.errors import UserError

DIT = SimpleNamespace(text_len=6, text_dim=8)  # the DiT's text context shape


def config(**fields):
    """The run spec of the base config with these top-level fields."""
    c = base_config()
    for name, value in fields.items():
        c[name] = value
    return from_config(c)


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# -- prompts_of ----------------------------------------------------------------------------------


def test_prompts_of_the_prompt():
    assert text.prompts_of(config(prompt="a red ball")) == ["a red ball"]


def test_prompts_of_a_file_skips_blank_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("  a red ball \n\n\t\na blue cube\r\nthe end")
    assert text.prompts_of(config(prompt="ignored", prompts_file=str(path))) == \
        ["a red ball", "a blue cube", "the end"]


def test_prompts_of_an_empty_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("\n  \n")
    with pytest.raises(UserError, match=exact(f"prompts_file {str(path)!r} holds no prompts")):
        text.prompts_of(config(prompts_file=str(path)))


# -- parse_schedule ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, first, want", [
    ("0:PROMPT A;30:PROMPT B", "", [(0, "PROMPT A"), (30, "PROMPT B")]),
    (" 0 : a cat ; 6:a dog; ", "", [(0, "a cat"), (6, "a dog")]),  # spaces and a trailing ';'
    ("40:it starts to rain", "a street", [(0, "a street"), (40, "it starts to rain")]),
    ("0:own start;9:later", "not used", [(0, "own start"), (9, "later")]),
    ("0:time: 12:00", "", [(0, "time: 12:00")]),  # only the first ':' separates
    ("", "just this", [(0, "just this")]),
])
def test_parse_schedule(spec, first, want):
    assert text.parse_schedule(spec, first) == want


@pytest.mark.parametrize("spec, first, message", [
    ("a cat", "", "prompt_schedule entry 'a cat' is not FRAME:PROMPT"),
    ("x:a cat", "", "prompt_schedule entry 'x:a cat' is not FRAME:PROMPT"),
    ("-3:a cat", "p", "prompt_schedule entry '-3:a cat' is not FRAME:PROMPT"),
    ("0:", "", "prompt_schedule entry '0:' is not FRAME:PROMPT"),
    ("0:a;12:   ", "", "prompt_schedule entry '12:' is not FRAME:PROMPT"),
    ("30:b;0:a", "", "prompt_schedule frames must increase, got [30, 0]"),
    ("0:a;6:b;6:c", "", "prompt_schedule frames must increase, got [0, 6, 6]"),
    ("12:later", "  ", "prompt_schedule has no prompt at frame 0 and no prompt is set"),
    ("", "", "prompt_schedule has no prompt at frame 0 and no prompt is set"),
])
def test_parse_schedule_refuses(spec, first, message):
    with pytest.raises(ValueError, match=exact(message)):
        text.parse_schedule(spec, first)


def test_parse_schedule_quotes_a_long_bad_entry_shortly():
    with pytest.raises(ValueError) as err:
        text.parse_schedule("x" * 500)
    assert str(err.value) == f"prompt_schedule entry {'x' * 60!r} is not FRAME:PROMPT"


# -- schedule_contexts ---------------------------------------------------------------------------


def test_schedule_contexts_encode_the_batch_wherever_a_prompt_changes():
    calls = []

    def encode(prompts):
        calls.append(prompts)
        return np.full((len(prompts), 1, 1), len(calls), np.float32)

    got = text.schedule_contexts([[(0, "a"), (30, "b")], [(0, "c"), (15, "d")]], encode)
    assert [t for t, _ in got] == [0, 15, 30]
    assert calls == [["a", "c"], ["a", "d"], ["b", "d"]]
    assert [float(ctx[0, 0, 0]) for _, ctx in got] == [1, 2, 3]


# -- placeholder_context -------------------------------------------------------------------------


def test_placeholder_context_one_row_per_word():
    ctx = text.placeholder_context("a red ball bouncing", 6, 8)
    assert ctx.shape == (6, 8) and ctx.dtype == np.float32
    assert np.all(np.abs(ctx[:4]).sum(-1) > 0)
    np.testing.assert_array_equal(ctx[4:], 0)


def test_placeholder_context_is_seeded_by_the_prompt():
    a = text.placeholder_context("a red ball", 6, 8)
    np.testing.assert_array_equal(a, text.placeholder_context("a red ball", 6, 8))
    assert not np.allclose(a[:3], text.placeholder_context("a red cube", 6, 8)[:3])
    # rows are drawn in order: a longer text_len changes no row the words fill
    np.testing.assert_array_equal(text.placeholder_context("a red ball", 10, 8)[:6], a)


def test_placeholder_context_cuts_at_text_len():
    ctx = text.placeholder_context(" ".join(["word"] * 20), 6, 8)
    assert ctx.shape == (6, 8) and np.all(np.abs(ctx).sum(-1) > 0)
    np.testing.assert_array_equal(text.placeholder_context("", 6, 8), np.zeros((6, 8)))


def test_placeholder_context_scale():
    ctx = text.placeholder_context(" ".join(f"w{i}" for i in range(400)), 400, 64)
    assert 0.45 < ctx.std() < 0.55 and abs(ctx.mean()) < 0.02  # half a standard normal


# -- load_embeds ---------------------------------------------------------------------------------


def test_load_embeds_npy_as_float32(tmp_path):
    emb = np.arange(12, dtype=np.float16).reshape(3, 4)
    np.save(tmp_path / "e.npy", emb)
    got = text.load_embeds(str(tmp_path / "e.npy"))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, emb.astype(np.float32))


@pytest.mark.parametrize("arrays, key", [
    ({"aaa": 1, "prompt_embeds": 2, "context": 3}, "context"),
    ({"aaa": 1, "prompt_embeds": 2}, "prompt_embeds"),
    ({"only": 1}, "only"),
])
def test_load_embeds_npz_key(tmp_path, arrays, key):
    path = tmp_path / "e.npz"
    np.savez(path, **{k: np.full((2, 4), v, np.float32) for k, v in arrays.items()})
    np.testing.assert_array_equal(text.load_embeds(str(path)), np.full((2, 4), arrays[key]))


def test_load_embeds_refuses_an_empty_npz(tmp_path):
    path = tmp_path / "e.npz"
    np.savez(path)
    with pytest.raises(UserError, match=exact(f"prompt_embeds {str(path)!r}: empty npz")):
        text.load_embeds(str(path))


@pytest.mark.parametrize("content", [None, b"hello, not numpy"])
def test_load_embeds_refuses_unreadable_files(tmp_path, content):
    path = tmp_path / "e.npy"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=r"^prompt_embeds .*e\.npy': not a readable \.npy/\.npz \(\w+\)$"):
        text.load_embeds(str(path))


# -- prompt_context ------------------------------------------------------------------------------


def test_prompt_context_pads_one_prompt_to_text_len(tmp_path):
    emb = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    np.save(tmp_path / "e.npy", emb)
    ctx = text.prompt_context(config(prompt_embeds=str(tmp_path / "e.npy")), DIT)
    assert ctx.shape == (1, 6, 8) and ctx.dtype == np.float32
    np.testing.assert_array_equal(ctx[0, :4], emb)
    np.testing.assert_array_equal(ctx[0, 4:], 0)


def test_prompt_context_keeps_a_batch(tmp_path):
    emb = np.random.default_rng(1).standard_normal((3, 6, 8)).astype(np.float32)  # already text_len rows
    np.savez(tmp_path / "e.npz", context=emb)
    ctx = text.prompt_context(config(prompt_embeds=str(tmp_path / "e.npz")), DIT)
    np.testing.assert_array_equal(ctx, emb)


@pytest.mark.parametrize("shape, message", [
    ((4, 5), "has shape [1, 4, 5]; the model expects [B, L, 8] (or [L, 8])"),
    ((8,), "has shape [8]; the model expects [B, L, 8] (or [L, 8])"),
    ((1, 2, 3, 8), "has shape [1, 2, 3, 8]; the model expects [B, L, 8] (or [L, 8])"),
])
def test_prompt_context_refuses_the_wrong_shape(tmp_path, shape, message):
    path = str(tmp_path / "e.npy")
    np.save(path, np.zeros(shape, np.float32))
    with pytest.raises(UserError, match=exact(f"prompt_embeds {path!r} {message}")):
        text.prompt_context(config(prompt_embeds=path), DIT)


def test_prompt_context_refuses_too_many_rows(tmp_path):
    path = str(tmp_path / "e.npy")
    np.save(path, np.zeros((7, 8), np.float32))
    with pytest.raises(UserError, match=exact("prompt_embeds has 7 rows, more than text_len 6")):
        text.prompt_context(config(prompt_embeds=path), DIT)


def test_prompt_context_encodes_the_prompts_without_embeds(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red ball\na blue cube\n")
    seen = []
    encoder = lambda prompts: seen.append(prompts) or np.zeros((len(prompts), 6, 8), np.float32)
    assert text.prompt_context(config(prompts_file=str(path)), DIT, encoder).shape == (2, 6, 8)
    assert seen == [["a red ball", "a blue cube"]]


def test_prompt_context_builds_the_configured_encoder():
    c = config(prompt="a red ball").but(text=dict(kind="placeholder"))
    ctx = text.prompt_context(c, DIT)
    np.testing.assert_array_equal(ctx, text.placeholder_context("a red ball", 6, 8)[None])


# -- TextEncoder ---------------------------------------------------------------------------------


def encoder_config(kind, **fields):
    c = base_config()
    c.text_encoder.kind = kind
    for name, value in fields.items():
        c.text_encoder[name] = value
    return from_config(c)


def test_placeholder_encoder():
    enc = text.TextEncoder(encoder_config("placeholder"), DIT)
    ctx = enc(["a red ball", "a much longer prompt about a blue cube"])
    assert ctx.shape == (2, 6, 8) and ctx.dtype == np.float32
    np.testing.assert_array_equal(ctx[1], text.placeholder_context("a much longer prompt about a blue cube", 6, 8))
    assert enc.count_tokens("a red  ball ") == 3


def test_no_encoder_refuses_text_prompts():
    enc = text.TextEncoder(encoder_config("none"), DIT)
    with pytest.raises(UserError, match="^a text prompt needs a text encoder: set text_encoder.kind=umt5 "):
        enc(["a red ball"])


def test_unknown_encoder_kind():
    with pytest.raises(UserError, match=exact("unknown text_encoder.kind 'clip'; choose umt5, placeholder or none")):
        text.TextEncoder(encoder_config("clip"), DIT)


def test_umt5_needs_its_checkpoint_and_tokenizer(tmp_path):
    with pytest.raises(UserError, match=r"^text_encoder\.checkpoint '' not found \(convert the umT5 encoder "):
        text.TextEncoder(encoder_config("umt5"), DIT)
    ckpt = tmp_path / "umt5"
    ckpt.mkdir()
    missing = str(tmp_path / "spiece.model")
    with pytest.raises(UserError, match=re.escape(f"text_encoder.tokenizer {missing!r} not found")):
        text.TextEncoder(encoder_config("umt5", checkpoint=str(ckpt), tokenizer=missing), DIT)


def test_umt5_refuses_a_directory_that_is_no_checkpoint(tmp_path):
    ckpt = tmp_path / "umt5"
    ckpt.mkdir()
    (tmp_path / "spiece.model").write_bytes(b"")
    c = encoder_config("umt5", checkpoint=str(ckpt), tokenizer=str(tmp_path / "spiece.model"))
    with pytest.raises(UserError, match=r"^t5 checkpoint .*umt5' not found \(expected a directory written by "):
        text.TextEncoder(c, DIT)
