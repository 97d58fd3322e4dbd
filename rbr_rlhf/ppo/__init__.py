"""RBR-PPO with DeepSpeed.

Read ``run.py`` first: the recipe of ``rbr-rlhf train``, top to bottom. It uses

- ``config``       the typed recipe (OmegaConf), ``assets`` what it builds on first use,
- ``services``     the rollout engine and grader service lifetimes, ``prompts`` the prompt sets,
- ``trainer``      ``PPOTrainer``: one step is rollout -> reward -> PPO update -> weight sync, with its data
                   typed in ``records`` (``Rollout``, ``Reward``, ``ScoredRollout``), the reward in
                   ``rewards`` and every PPO quantity in ``core``,
- ``distributed``, ``checkpoint``, ``rundir`` the process group, checkpoints, run directory and summary.

Nothing is imported here, so ``import rbr_rlhf.ppo.config`` does not load torch.
"""
