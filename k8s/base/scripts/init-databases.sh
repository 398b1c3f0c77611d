#!/bin/sh
# Create one login role and one database per AI/ML service. Idempotent: an existing role gets its
# password reset to the Secret's value, an existing database is left as it is. Values reach SQL only
# through psql variables (quoted by format %I/%L), never by string concatenation in the shell.
set -eu

for service in AGENT TRAINING TUNING DEPLOYMENT DATA_INTEGRATION PIPELINE MLFLOW; do
  eval "role=\${${service}_DB_USER}"
  eval "password=\${${service}_DB_PASSWORD}"
  eval "database=\${${service}_DB_NAME}"
  psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 --dbname=postgres \
    -v role="$role" -v pw="$password" -v db="$database" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'db') \gexec
SELECT format('GRANT ALL ON DATABASE %I TO %I', :'db', :'role') \gexec
SQL
  echo "database $database ready for role $role"
done
