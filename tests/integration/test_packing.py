"""Packed, padding-free batches must not let one example attend to another."""


def test_packed_log_probs_match_each_example_alone(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    a, b = torch.tensor([[5, 6, 7, 8, 9]]), torch.tensor([[10, 11, 12]])
    packed = torch.cat([a, b], dim=1)
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]])
    with torch.no_grad():
        # TRL trains with use_cache=False; transformers only reads packing from position_ids without a cache
        together = model(input_ids=packed, position_ids=position_ids, use_cache=False).logits
        alone = torch.cat([model(input_ids=a).logits, model(input_ids=b).logits], dim=1)
        leaky = model(input_ids=packed, use_cache=False).logits  # no position reset: b sees a
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(leaky[:, 5:], alone[:, 5:], atol=1e-4)
