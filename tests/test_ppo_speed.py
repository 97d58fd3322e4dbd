"""Issue 19's training-phase fixes are exact: logits only from the first response position on
(``logits_to_keep``), and minibatches cut to their longest sequence, give the same log-probabilities,
entropies and values as the full computation."""

import torch

from rbr_rlhf.ppo.batch import chunked_forward, critic_forward, minibatch_indices, pack, policy_forward
from rbr_rlhf.ppo.core import entropy_from_logits, logprobs_from_logits


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)).eval()


def _reference(model, batch):
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    idx = batch.resp_index.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    resp = torch.gather(logits, 1, idx)
    return logprobs_from_logits(resp, batch.resp_tokens) * batch.resp_mask, entropy_from_logits(resp) * batch.resp_mask


def _batch():
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (9, 4, 15, 6)]
    resps = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (5, 11, 2, 1)]
    return pack(prompts, resps, pad_id=0)


def test_logits_only_from_the_first_response_position_are_exact():
    model, batch = _tiny(), _batch()
    with torch.no_grad():
        want_lp, want_ent = _reference(model, batch)
        got_lp, got_ent = policy_forward(model, batch, with_entropy=True)
        assert torch.allclose(got_lp, want_lp, atol=1e-5) and torch.allclose(got_ent, want_ent, atol=1e-5)
        assert torch.allclose(policy_forward(model, batch), want_lp, atol=1e-5)


def test_minibatch_select_trims_padding_columns_exactly():
    model, batch = _tiny(), _batch()
    idx = torch.tensor([1, 3])  # the two short samples: 15 and 7 tokens of a 17-wide batch
    mb = batch.select(idx)
    assert mb.input_ids.shape[1] == 15 < batch.input_ids.shape[1]
    assert mb.resp_mask.shape == batch.resp_mask[idx].shape  # response columns keep the batch's width
    with torch.no_grad():
        full = _reference(model, batch)[0][idx]
        assert torch.allclose(policy_forward(model, mb), full, atol=1e-5)

    class Critic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model.model
            self.head = torch.nn.Linear(32, 1)

        def forward(self, input_ids, attention_mask):
            return self.head(self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state).squeeze(-1)

    critic = Critic()
    with torch.no_grad():
        assert torch.allclose(critic_forward(critic, mb), critic_forward(critic, batch)[idx], atol=1e-5)


def test_models_without_logits_to_keep_still_work():
    inner, batch = _tiny(), _batch()

    class NoKeep(torch.nn.Module):
        def forward(self, input_ids, attention_mask):
            return inner(input_ids=input_ids, attention_mask=attention_mask)

    with torch.no_grad():
        assert torch.allclose(policy_forward(NoKeep(), batch), _reference(inner, batch)[0], atol=1e-5)


def test_length_sorted_chunks_equal_one_pass():
    model, batch = _tiny(), _batch()
    with torch.no_grad():
        whole = policy_forward(model, batch)
        assert torch.allclose(chunked_forward(lambda b: policy_forward(model, b), batch, 2), whole, atol=1e-5)
        assert torch.allclose(chunked_forward(lambda b: policy_forward(model, b), batch, 3), whole, atol=1e-5)


def test_minibatches_by_length_cover_every_row_once_and_group_similar_lengths():
    batch = _batch()  # sequence lengths 14, 15, 17, 7
    gen = torch.Generator().manual_seed(0)
    for mode in ("random", "by_length"):
        groups = minibatch_indices(batch, 2, mode, gen)
        assert sorted(torch.cat(groups).tolist()) == [0, 1, 2, 3]
    groups = minibatch_indices(batch, 2, "by_length", gen)
    assert sorted(sorted(g.tolist()) for g in groups) == [[0, 3], [1, 2]]
    widths = sorted(batch.select(g).input_ids.shape[1] for g in groups)
    assert widths == [14, 17]  # {7, 14} and {15, 17}: 31 columns against 34 for the worst random pairing


# ---------------------------------------------------------------------------- a prompt and its samples in one row
def _shared_case():
    """3 prompts x 3 samples, of uneven lengths (one response a single token)."""
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (9, 4, 15)]
    lengths = [[5, 11, 2], [1, 7, 7], [3, 9, 4]]
    prompt_ids = [p for p in prompts for _ in range(3)]
    responses = [torch.randint(3, 97, (n,), generator=g).tolist() for row in lengths for n in row]
    return prompt_ids, responses


def test_shared_prompt_rows_give_the_same_logprobs_entropies_values_and_gradients():
    from rbr_rlhf.ppo.batch import pack_shared

    model = _tiny()
    prompt_ids, responses = _shared_case()
    plain, shared = pack(prompt_ids, responses, 0), pack_shared(prompt_ids, responses, 0, 3)
    assert shared.input_ids.shape[0] == 3 and int(shared.lengths.sum()) == 28 + 49  # each prompt once
    assert int(plain.lengths.sum()) == 3 * 28 + 49
    with torch.no_grad():
        want_lp, want_ent = policy_forward(model, plain, with_entropy=True)
        got_lp, got_ent = policy_forward(model, shared, with_entropy=True)
        assert torch.allclose(got_lp, want_lp, atol=1e-5) and torch.allclose(got_ent, want_ent, atol=1e-5)
        assert torch.allclose(got_lp, _reference(model, plain)[0], atol=1e-5)

    class Critic(torch.nn.Module):  # the ValueModel's signature: position ids for shared rows
        def __init__(self):
            super().__init__()
            self.m, self.head = model.model, torch.nn.Linear(32, 1)

        def forward(self, input_ids, attention_mask, position_ids=None):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
            return self.head(h).squeeze(-1)

    critic = Critic()
    with torch.no_grad():
        assert torch.allclose(critic_forward(critic, shared), critic_forward(critic, plain), atol=1e-5)

    weights = torch.randn(plain.resp_mask.shape, generator=torch.Generator().manual_seed(3))
    grads = []
    for batch in (plain, shared):
        model.zero_grad()
        (policy_forward(model, batch) * weights).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_shared_rows_minibatches_and_chunks_take_whole_prompts():
    from rbr_rlhf.ppo.batch import pack_shared

    model = _tiny()
    prompt_ids, responses = _shared_case()
    shared = pack_shared(prompt_ids, responses, 0, 3)
    gen = torch.Generator().manual_seed(0)
    for mode in ("random", "by_length"):
        groups = minibatch_indices(shared, 3, mode, gen)
        assert sorted(sorted(g.tolist()) for g in groups) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    mb = shared.select(torch.tensor([3, 4, 5]))  # the 4-token prompt's row: 4 + 1 + 7 + 7 columns
    assert mb.input_ids.shape == (1, 19) and mb.model_inputs()["attention_mask"].shape == (1, 1, 19, 19)
    with torch.no_grad():
        whole = policy_forward(model, shared)
        assert torch.allclose(policy_forward(model, mb), whole[3:6], atol=1e-5)
        for size in (3, 6):
            assert torch.allclose(chunked_forward(lambda b: policy_forward(model, b), shared, size), whole, atol=1e-5)


def test_pack_shared_refuses_samples_of_different_prompts():
    import pytest

    from rbr_rlhf.ppo.batch import pack_shared

    with pytest.raises(ValueError, match="do not share one prompt"):
        pack_shared([[5, 6], [5, 7]], [[1], [2]], 0, 2)
    with pytest.raises(ValueError, match="groups of 2"):
        pack_shared([[5, 6]] * 3, [[1]] * 3, 0, 2)


def test_ranks_shard_whole_prompts_when_rows_are_shared():
    from rbr_rlhf.ppo.trainer import shard_indices

    assert shard_indices(8, 1, 0, 2) == [0, 2, 4, 6] and shard_indices(8, 1, 1, 2) == [1, 3, 5, 7]  # one sample a row
    assert shard_indices(8, 2, 0, 2) == [0, 1, 4, 5] and shard_indices(8, 2, 1, 2) == [2, 3, 6, 7]  # 4 prompts x 2
    assert shard_indices(8, 4, 0, 1) == list(range(8))
