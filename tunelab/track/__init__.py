"""Results: the study report and its figures, MLflow tracking, the table across DVC experiments
and the determinism check between two runs.
"""
