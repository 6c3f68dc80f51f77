"""The speedrun recipe's model options (issue 18): each trains, and generation with a KV cache (the
eager forward and the one-token decode step) gives the logits of the full forward."""

import math

import pytest
import torch

from llmpipe.model.decode import KVCache
from llmpipe.model.gpt import GPT, GPTConfig
from llmpipe.model.loss import linear_cross_entropy
from llmpipe.training.generate import generate

OPTIONS = [{"qk_norm": True}, {"mlp": "relu2"}, {"tie_embeddings": False, "zero_init_head": True},
           {"logit_softcap": 3.0}, {"value_embeds": True}, {"value_embeds": True, "n_kv_head": 2},
           {"qk_norm": True, "mlp": "relu2", "tie_embeddings": False, "zero_init_head": True,
            "logit_softcap": 15.0, "value_embeds": True}]


def tiny(**kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, block_size=32, **kw)).eval()
    with torch.no_grad():  # a zero head would make every comparison below trivially equal
        if kw.get("zero_init_head"):
            model.lm_head.weight.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("kw", OPTIONS)
def test_cached_decoding_gives_the_full_forward_logits(kw):
    model = tiny(**kw)
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        full, _ = model(x)
        cache = KVCache(model.cfg, 2, "cpu", torch.float32)
        first, _ = model(x[:, :8], cache=cache)  # prefill, then one token at a time
        assert torch.allclose(first, full[:, :8], atol=1e-5)
        for t in range(8, 12):
            step, _ = model(x[:, t : t + 1], cache=cache, last_only=True)
            assert torch.allclose(step[:, -1], full[:, t], atol=1e-5), t
        # the fixed-shape step of compiled generation, run eagerly
        cache = KVCache(model.cfg, 2, "cpu", torch.float32)
        model(x[:, :8], cache=cache)
        slots = torch.arange(32)
        for t in range(8, 12):
            mask = (slots <= t)[None, None, None].expand(2, 1, 1, 32)
            logits = model.decode_step(x[:, t : t + 1], torch.full((2,), t), slots[t : t + 1], mask, None,
                                       cache.k, cache.v)
            assert torch.allclose(logits, full[:, t], atol=1e-5), t
    prompt = [5, 17, 3, 42, 8]
    assert generate(model, prompt, 12, temperature=0.0) == generate(model, prompt, 12, temperature=0.0,
                                                                      use_cache=False)


@pytest.mark.parametrize("kw", OPTIONS)
def test_each_option_learns_and_its_parameters_get_gradients(kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, n_layer=2, n_head=4, d_model=32, block_size=32, **kw))
    x = torch.arange(64).remainder(97).view(2, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        losses.append(loss.item())
        if len(losses) == 1:
            # the zero-init head gets a gradient at once; the blocks start learning from the next step
            assert all(p.grad is not None for n, p in model.named_parameters() if "blocks" not in n)
        opt.step()
        opt.zero_grad()
    assert losses[-1] < losses[0] - 1.0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_zero_init_head_starts_uniform_and_needs_an_untied_head():
    model = GPT(GPTConfig(vocab_size=97, n_layer=1, n_head=2, d_model=16, block_size=16, tie_embeddings=False,
                          zero_init_head=True))
    _, loss = model(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    assert loss.item() == pytest.approx(math.log(97), abs=1e-6)
    with pytest.raises(ValueError, match="zero_init_head"):
        GPTConfig(vocab_size=97, zero_init_head=True)


def test_softcap_bounds_logits_and_the_fused_loss_matches_the_plain_one():
    model = tiny(logit_softcap=2.0)
    with torch.no_grad():
        model.lm_head.weight.mul_(200.0)
        logits, _ = model(torch.randint(0, 97, (2, 8)))
    assert logits.abs().max().item() <= 2.0 and logits.abs().max().item() > 1.9
    h = torch.randn(50, 32, requires_grad=True)
    w = torch.randn(97, 32, requires_grad=True)
    t = torch.randint(0, 97, (50,))
    fused = linear_cross_entropy(h, w, t, chunk_rows=16, softcap=3.0)
    fused.backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    plain = torch.nn.functional.cross_entropy(3.0 * torch.tanh(h @ w.t() / 3.0), t)
    plain.backward()
    assert torch.allclose(fused, plain, atol=1e-5)
    assert torch.allclose(gh, h.grad, atol=1e-5) and torch.allclose(gw, w.grad, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, t, chunk_rows=16, softcap=3.0), plain, atol=1e-5)


def test_relu2_mlp_is_relu_squared_and_qk_norm_bounds_attention_inputs():
    model = tiny(mlp="relu2", qk_norm=True)
    mlp = model.blocks[0].mlp
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert torch.allclose(mlp(x), mlp.down(torch.relu(mlp.up(x)) ** 2), atol=1e-6)
    assert mlp.up.weight.shape == (128, 32)  # 4 * d_model, ungated


@pytest.mark.parametrize("softcap", [None, 15.0])
def test_fused_loss_under_bf16_autocast_matches_the_plain_autocast_path(softcap, monkeypatch):
    """The chunked loss with bf16 matmuls (issue 18's bf16 throughput fix) gives what plain autocast
    gives, to bf16's resolution, and gradients in the parameters' own dtype."""
    model = tiny(logit_softcap=softcap, tie_embeddings=False)
    x, y = torch.randint(0, 97, (4, 32)), torch.randint(0, 97, (4, 32))
    grads = {}
    for fused in (True, False):
        monkeypatch.setattr(GPT, "FUSED_BF16", fused)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = model(x, y)
        assert (logits is None) == fused
        loss.backward()
        grads[fused] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert torch.allclose(grads[True][0], grads[False][0], atol=2e-2)
    for n, g in grads[False][1].items():
        assert grads[True][1][n].dtype == torch.float32
        assert torch.allclose(grads[True][1][n], g, atol=2e-2 * g.abs().max().item() + 1e-6), n
