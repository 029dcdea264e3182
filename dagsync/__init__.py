"""dagsync: keeps Airflow DAG folders identical on every node."""

from dagsync.slim import keep_openssl_out

__version__ = "0.1.0"

keep_openssl_out()
