-- The stack's databases, named as ops/stack.py names them (`<RECSYS_STACK_DB_PREFIX>_<role>`).
CREATE DATABASE recsys_airflow;
CREATE DATABASE recsys_mlflow;
CREATE DATABASE recsys_api;
