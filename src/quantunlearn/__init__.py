"""quantunlearn: does LLM unlearning survive quantization? A Snakemake study, as a package."""

__version__ = "0.1.0"
