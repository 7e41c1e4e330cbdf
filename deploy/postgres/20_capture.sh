#!/bin/sh
# First start of the compose Postgres: the capture role and one publication per connector file
# (the files say publication.autocreate.mode=disabled). psql reads the password from the secret
# file itself (\set with backticks): it is on no command line.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\set cdc_password `cat /run/secrets/pg_cdc_password`
CREATE ROLE bankde_cdc LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS
  PASSWORD :'cdc_password';
GRANT CONNECT ON DATABASE bank TO bankde_cdc;
GRANT USAGE ON SCHEMA bank, truth TO bankde_cdc;
GRANT SELECT ON bank.customer, bank.account, bank.card, bank.terminal, bank.transaction,
  truth.fraud_episode, truth.fraud_label TO bankde_cdc;
CREATE PUBLICATION bankde_kc_customer FOR TABLE bank.customer, bank.account;
CREATE PUBLICATION bankde_kc_card FOR TABLE bank.card;
CREATE PUBLICATION bankde_kc_terminal FOR TABLE bank.terminal;
CREATE PUBLICATION bankde_kc_transaction FOR TABLE bank.transaction;
CREATE PUBLICATION bankde_kc_truth FOR TABLE truth.fraud_episode, truth.fraud_label;
SQL
