-- Database roles by job (least privilege): run once, with psql, as a superuser (or a role with
-- CREATEROLE and CREATEDB). tests/suite/db_roles.rs runs this very file and then the sidecars
-- under token_sidecar.
--
--   token_sidecar_owner  owns the schema: `token-sidecar migrate` (the migrate Job) runs as it.
--   token_sidecar        what every sidecar connects as: reads and writes rows, LISTEN/NOTIFY,
--                        advisory locks; no DDL (CREATE, ALTER, DROP and TRUNCATE are refused).
--
-- Sidecars then start with TOKEN_SIDECAR_MIGRATE=never (or `auto`, which creates nothing once
-- the schema is current) and a DATABASE_URL naming token_sidecar; the migrate Job's
-- DATABASE_URL names token_sidecar_owner. Passwords: set them with \password, never here.
--
-- Upgrading an install whose tables token_sidecar created (before 0.2): run this file, then as
-- a superuser in the database: REASSIGN OWNED BY token_sidecar TO token_sidecar_owner; and the
-- two GRANTs at the end again.

CREATE ROLE token_sidecar_owner LOGIN;
CREATE ROLE token_sidecar LOGIN;
-- PostgreSQL 15+: the database owner owns the public schema, so only it may create there.
CREATE DATABASE tokens OWNER token_sidecar_owner;
REVOKE ALL ON DATABASE tokens FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE tokens TO token_sidecar;

\connect tokens
-- PostgreSQL 13 and 14 still let every role create in public: take that away.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO token_sidecar;
-- Every table and sequence a migration creates later is the sidecars' to read and write.
ALTER DEFAULT PRIVILEGES FOR ROLE token_sidecar_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO token_sidecar;
ALTER DEFAULT PRIVILEGES FOR ROLE token_sidecar_owner IN SCHEMA public
  GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO token_sidecar;
-- And those that exist already (an upgrade).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO token_sidecar;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO token_sidecar;
