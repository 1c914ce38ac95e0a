"""tunekit.data: validation, the llm-jp template, tokenisation cache, mixing, packing (see README.md).

Entry points: `tunekit.data.sft.load_sft_data(cfg)`, `tunekit.data.dpo.load_dpo_data(cfg)`,
`tunekit.template.CHAT_TEMPLATE`. Kept import-light (the CLI imports this package).
"""
