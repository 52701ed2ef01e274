-- The workflow module's schema. Its tables (workers, executions, leases) come in later files.
CREATE SCHEMA IF NOT EXISTS workflow;
