"""dagsync: keeps Airflow DAG folders identical on every node."""

__version__ = "0.1.0"
