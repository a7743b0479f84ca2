"""lmms-eval task definitions shipped with infllava (YAML + the functions they name); see
`infllava.evaluation.lmms_eval`."""
