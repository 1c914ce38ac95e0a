"""tunekit: SFT/DPO fine-tuning of llm-jp-4-8b, driven by notebooks, from a laptop CPU to ABCI."""
__version__ = "0.1.0"
