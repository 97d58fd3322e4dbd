"""rbr-rlhf: RLHF with Rule-Based Rewards."""
__version__ = "0.1.0"
