"""PPO math against hand computations."""

import pytest
import torch

from rbr_rlhf.ppo.core import (AdaptiveKLController, gae, leave_one_out, logprobs_from_logits, masked_mean,
                               per_token_rewards, policy_loss, reward_to_go, value_loss, whiten)


def test_gae_matches_a_hand_computation():
    values = torch.tensor([[0.5, 0.2, 0.1, 9.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the last position is padding: ignored entirely
    g, lam = 0.9, 0.8
    d2 = 1.0 - 0.1
    d1 = 0.0 + g * 0.1 - 0.2
    d0 = 0.0 + g * 0.2 - 0.5
    a2, a1 = d2, d1 + g * lam * d2
    a0 = d0 + g * lam * a1
    adv, ret = gae(values, rewards, mask, g, lam)
    torch.testing.assert_close(adv, torch.tensor([[a0, a1, a2, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.1, 0.0]]))


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.3, 0.2, 0.1]])
    adv, _ = gae(values, rewards, torch.ones(1, 3), 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[6.0 - 0.3, 5.0 - 0.2, 3.0 - 0.1]]))


def test_leave_one_out_subtracts_the_mean_of_the_other_samples_of_the_prompt():
    scores = torch.tensor([1.0, 2.0, 6.0, -1.0, -1.0, 5.0])  # two prompts, three samples each
    out = leave_one_out(scores, 3)
    torch.testing.assert_close(out, torch.tensor([1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5, -1.0 - 2.0, -1.0 - 2.0, 5.0 + 1.0]))
    # a prompt-level offset (e.g. R_rbr's level for one response type) cancels
    shifted = scores + torch.tensor([10.0] * 3 + [-7.0] * 3)
    torch.testing.assert_close(leave_one_out(shifted, 3), out)
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out(scores, 1)
    with pytest.raises(ValueError, match="groups of 4"):
        leave_one_out(scores, 4)


def test_per_prompt_scale_gives_a_small_scale_prompt_the_weight_of_a_large_one():
    from rbr_rlhf.ppo.core import scale_per_prompt

    # a benign prompt whose R_rm differences are 0.1 wide, a safety prompt whose R_rbr differences are 4 wide
    adv = leave_one_out(torch.tensor([0.05, -0.05, 2.0, -2.0]), 2)
    out = scale_per_prompt(adv, 2)
    torch.testing.assert_close(out, torch.tensor([1.0, -1.0, 1.0, -1.0]) * 0.5 ** 0.5, rtol=1e-4, atol=1e-4)
    assert torch.equal(scale_per_prompt(torch.zeros(4), 2), torch.zeros(4))  # identical samples stay at 0


def test_reward_to_go_is_gae_without_a_critic():
    rewards = torch.tensor([[0.1, -0.2, 2.0, 5.0], [0.3, 1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    returns = reward_to_go(rewards, mask, gamma=1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.9, 1.8, 2.0, 0.0], [1.3, 1.0, 0.0, 0.0]]))
    adv, _ = gae(torch.zeros_like(rewards), rewards, mask, 1.0, 1.0)
    torch.testing.assert_close(returns, adv)


def test_rewards_put_score_on_last_real_token_and_penalise_kl():
    logp = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -2.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = per_token_rewards(torch.tensor([2.0, 3.0]), logp, ref, mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 2.0], [0.0, 0.1 + 3.0, 0.0]]))


def test_policy_loss_clips_large_ratios():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[2.0, 0.5]]))  # ratios 2.0 and 0.5
    adv = torch.tensor([[1.0, -1.0]])
    loss, stats = policy_loss(new, old, adv, torch.ones(1, 2), clip_range=0.2)
    # positive advantage: min(2*1, 1.2*1) -> 1.2; negative: min(0.5*-1, 0.8*-1) -> -0.8 (pessimistic bound)
    assert loss.item() == pytest.approx(-(1.2 + -0.8) / 2)
    assert stats["policy/clipfrac"] == pytest.approx(1.0)


def test_policy_gradient_vanishes_when_clipped():
    new = torch.log(torch.tensor([[2.0]])).requires_grad_()
    loss, _ = policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    loss.backward()
    assert new.grad.abs().item() == 0.0


def test_value_loss_clipping():
    loss, _ = value_loss(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.5)
    assert loss.item() == pytest.approx(0.5 * (0.5 - 2.0) ** 2)  # the clipped value is worse: it counts


def test_whiten_and_masked_mean_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)
    w = whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-6) and w[0, 3] == 0


def test_logprobs_from_logits():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    lp = logprobs_from_logits(logits, torch.tensor([[1, 0]]))
    torch.testing.assert_close(lp, torch.log_softmax(logits, -1)[0, [0, 1], [1, 0]].unsqueeze(0))


def test_adaptive_kl_controller_moves_toward_target():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    c.update(12.0, n_steps=1000)
    assert c.value == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    c2 = AdaptiveKLController(0.1, 6.0, 10000)
    c2.load_state_dict(c.state_dict())
    assert c2 == c
