"""The stage functions of the project's DAGs, over plain paths and JSON dicts: `nightly` (with
`NIGHTLY_STAGES`, the one declared stage list), `deploy` and `experiments`. The DAGs in dags/ wire
them into tasks and `python -m cli` runs the same functions by hand. Not Airflow plugins: nothing
here imports Airflow."""
