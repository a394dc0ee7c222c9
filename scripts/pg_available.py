"""Exit 0 if a PostgreSQL server answers at the SQLAlchemy URL given as the only argument."""

import sys

import psycopg

url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://", 1)
try:
    psycopg.connect(url, connect_timeout=3).close()
except psycopg.Error as e:
    print(f"PostgreSQL check failed: {str(e).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
