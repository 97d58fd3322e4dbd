"""The four PPO models: policy (actor), reference policy, critic (value model), reward model.

* With LoRA the reference policy is the policy with its adapters switched off (``disable_adapter``), so
  no second copy of the weights is held: TRL does the same.
* The critic is a language-model backbone with a scalar value head on every token, initialised from the
  policy (a fresh head) or from the reward model (its backbone and score head) when it is a causal LM
  that shares the policy's tokenizer.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the config module imports rollout.weight_sync, which imports this one
    from .config import LoraSettings


def _lora(model, settings: LoraSettings, task_type: str):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=0.0,
                     target_modules=list(settings.target_modules), task_type=task_type)
    return get_peft_model(model, cfg)


def load_policy(path: str, lora: LoraSettings):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True)
    model.config.use_cache = False
    return _lora(model, lora, "CAUSAL_LM") if lora.enabled else model


class ReferencePolicy:
    """log pi_ref: the LoRA policy with adapters off, or a frozen copy of a fully fine-tuned policy."""

    def __init__(self, policy, lora_enabled: bool):
        self.lora = lora_enabled
        self.frozen = None
        if not lora_enabled:
            self.frozen = copy.deepcopy(policy).eval()
            for p in self.frozen.parameters():
                p.requires_grad_(False)

    def context(self, policy):
        if self.lora:
            return policy.disable_adapter()
        return contextlib.nullcontext()

    def model(self, policy):
        return policy if self.lora else self.frozen


class ValueModel(nn.Module):
    """Backbone + linear head: a value for every token position."""

    def __init__(self, backbone: nn.Module, hidden_size: int, head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        self.value_head = head if head is not None else nn.Linear(hidden_size, 1)
        if head is None:
            nn.init.zeros_(self.value_head.weight)  # start at V = 0: no bias toward any return
            nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, position_ids=None):
        extra = {} if position_ids is None else {"position_ids": position_ids}  # shared-prompt rows (ppo/batch.py)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.value_head(hidden.float()).squeeze(-1)


def load_critic(policy_path: str, init: str, reward_model_path: str | None, lora: LoraSettings) -> ValueModel:
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    head = None
    source = policy_path
    if init == "reward_model":
        if reward_model_path is None:
            raise ValueError("critic.init=reward_model needs reward_model.path")
        rm_cfg = AutoConfig.from_pretrained(reward_model_path)
        same_tok = AutoTokenizer.from_pretrained(reward_model_path).get_vocab() == AutoTokenizer.from_pretrained(policy_path).get_vocab()
        if not same_tok or rm_cfg.model_type != AutoConfig.from_pretrained(policy_path).model_type:
            raise ValueError("critic.init=reward_model needs a reward model of the policy's architecture and "
                             "tokenizer; use critic.init=policy")
        rm = AutoModelForSequenceClassification.from_pretrained(reward_model_path, dtype=torch.float32, use_safetensors=True)
        head = nn.Linear(rm.score.in_features, 1)
        head.weight.data.copy_(rm.score.weight.data[:1])
        head.bias.data.zero_()
        source = reward_model_path
    backbone = AutoModel.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    if lora.enabled:
        backbone = _lora(backbone, lora, "FEATURE_EXTRACTION")
    return ValueModel(backbone, backbone.config.hidden_size, head)


@torch.no_grad()
def merged_policy_state_dict(policy) -> dict[str, torch.Tensor]:
    """Full policy weights with LoRA merged in, under the base model's parameter names (what vLLM loads)."""
    if hasattr(policy, "merge_adapter"):
        policy.merge_adapter()
        try:
            base = policy.get_base_model()
            state = {k: v.detach().clone() for k, v in base.state_dict().items() if "lora_" not in k}
        finally:
            policy.unmerge_adapter()
        # peft wraps targeted Linear layers: ".base_layer.weight" is the merged weight's real name.
        return {k.replace(".base_layer", ""): v for k, v in state.items()}
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}
