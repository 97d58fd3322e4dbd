"""Launching a recipe on a cluster (``rbr-rlhf launch slurm``) or on one machine (``rbr-rlhf launch local``).

The SLURM job script is a Jinja template shipped beside this file (``slurm.sbatch.j2``); everything that
differs between clusters (ports, NCCL settings, which GPUs serve rollouts, the shared directory) comes
from the recipe's ``launch:`` section, so a launch is one command plus a recipe.
"""
