-- The stack's databases on one PostgreSQL: the prediction store (rakuten, created by the
-- image from POSTGRES_DB), MLflow's backend and Airflow's metadata.
CREATE DATABASE mlflow;
CREATE DATABASE airflow;
