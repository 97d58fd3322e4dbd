"""The RBR data pipeline: prompts -> response types -> synthetic comparisons -> fitted RBR weights."""
