"""tunekit.evaluate: generate the way the submission does, score the way the competition does.

Modules (import what you need; nothing heavy is imported here):
    verify      check(output, solution, method) -> Verdict: the competition's rules on Math-Verify
    normalize   the text normalisations those rules use (pure string functions)
    records     the gold / prediction JSONL contract (load_gold, load_predictions, ...)
    scoring     score_files(pred, gold, scorer) -> ScoreReport (official JSON + table)
    prompts     the submission prompt (official) and chain of thought ending in \\boxed{}
    generate    generate_answers(model_spec, problems, style, Decoding, backend) -> Generation
    voting      majority vote over normalised answers, pass@k, maj@k
    evaluation  evaluate_models(...) for notebooks/50_evaluate, comparison tables, summaries
    submission  prepare_submission / smoke_test (the submission's inference contract)
    gpu_env     the numeric CUDA_VISIBLE_DEVICES guard for vLLM
"""
