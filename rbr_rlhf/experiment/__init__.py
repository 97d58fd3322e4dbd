"""The paper's comparison at small scale: Helpful-PPO, Human-PPO and RBR-PPO from one SFT start (``rbr-rlhf experiment``)."""
