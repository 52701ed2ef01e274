-- The auth module's schema. Its tables (API tokens) come in later files.
CREATE SCHEMA IF NOT EXISTS auth;
