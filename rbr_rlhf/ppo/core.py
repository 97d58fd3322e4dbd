"""The PPO step, one named function per part, as in the literature.

Notation follows Ziegler et al. (2019) and Ouyang et al. (2022), CleanRL's ``ppo.py`` layout:
tensors are [batch, response_len]; ``mask`` is 1 on real response tokens and 0 on padding.

    per-token reward   r_t = -beta * (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) + [t = T] * score
    GAE                delta_t = r_t + gamma * V(s_{t+1}) - V(s_t);  A_t = sum_l (gamma*lambda)^l delta_{t+l}
    returns            R_t = A_t + V(s_t)
    policy loss        -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A),  ratio = exp(logp - logp_old)
    value loss         0.5 * max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2)

Without a critic (``ppo.advantage: rloo``; Ahmadian et al., 2024, "Back to Basics: Revisiting REINFORCE
Style Optimization for Learning from Human Feedback"; OpenRLHF's ``advantage_estimator: rloo``), k samples
of each prompt are drawn and each sample's score is judged against the mean of its k - 1 siblings:

    leave-one-out      score_i - mean_{j != i} score_j          (over the samples of one prompt)
    per prompt (opt.)  divided by the std of that prompt's leave-one-out scores (ppo.rloo_scale: prompt)
    returns            R_t = sum_{t' >= t} gamma^(t'-t) r_t'   (r_t as above, with that score); A_t = R_t
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Advantage whitening over the real tokens of the batch."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) for each position: logits [B, T, V], tokens [B, T] -> [B, T]."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                      mask: torch.Tensor, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-penalised per-token rewards; the sequence score lands on the last real token.

    Returns (rewards, kl) where kl = logprobs - ref_logprobs per token (the k1 estimator).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.long().sum(1).clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def leave_one_out(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO's baseline: each score minus the mean of the other samples of its prompt.

    ``scores`` holds consecutive groups of ``group_size`` samples, one group per prompt. What is left is the
    part of a score that this completion earned over its siblings: the prompt's own difficulty (R_rbr's
    level differs by response type, R_rm's by topic) cancels, which a critic has to learn first."""
    if group_size < 2:
        raise ValueError(f"a leave-one-out baseline needs at least 2 samples per prompt, got {group_size}")
    if scores.numel() % group_size:
        raise ValueError(f"{scores.numel()} scores do not split into groups of {group_size}")
    groups = scores.view(-1, group_size)
    baseline = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(scores.shape)


def scale_per_prompt(advantages: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Each prompt's leave-one-out advantages divided by their own standard deviation. As the leave-one-out
    score is k/(k-1) (s_i - mean), this is exactly GRPO's (s_i - mean) / std (Shao et al. 2024). Why: when reward terms differ in scale by prompt type (R_rbr spans
    about 4 on safety prompts, the helpful RM about 0.1 on benign ones), batch-level whitening leaves the
    small-scale prompts almost no gradient; per prompt, every prompt's better samples count alike. The
    cost (Liu et al. 2025, "Dr. GRPO"): prompts whose samples barely differ get their noise amplified."""
    groups = advantages.view(-1, group_size)
    return (groups / (groups.std(1, keepdim=True) + eps)).reshape(advantages.shape)


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = sum_{t' >= t} gamma^(t'-t) r_t' over the response tokens: GAE with no critic (V = 0, lambda = 1)."""
    return gae(torch.zeros_like(rewards), rewards, mask, gamma, 1.0)[0]


def gae(values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al., 2016) over the response tokens.

    Right-padded responses: V and r are 0 past the end (mask), so bootstrapping stops at the last token.
    """
    values, rewards = values * mask, rewards * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae * mask[:, t + 1] if t + 1 < T else delta
        advantages[:, t] = last_gae
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate objective (Schulman et al., 2017), as a loss to minimise."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "policy/clipfrac": masked_mean((clipped > unclipped).float(), mask).item(),
            # http://joschu.net/blog/kl-approx.html: k3 = (ratio - 1) - log ratio, unbiased and >= 0
            "policy/approx_kl": masked_mean((ratio - 1) - log_ratio, mask).item(),
            "policy/ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range_value: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss: the value may move at most ``clip_range_value`` from its rollout estimate."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
    with torch.no_grad():
        stats = {"value/clipfrac": masked_mean(((clipped - returns) ** 2 > (values - returns) ** 2).float(), mask).item(),
                 "value/mean": masked_mean(values, mask).item()}
    return loss, stats


@dataclass
class FixedKLController:
    value: float

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019): move beta so the observed KL tracks ``target`` over ``horizon`` samples."""

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = max(min(current_kl / self.target - 1.0, 0.2), -0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), int(state["horizon"])
