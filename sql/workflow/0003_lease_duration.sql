-- The lease duration each attempt was granted (at claim, and again at every renew). The
-- lease-expiry scanner gives every lease one whole duration of reachable database after an
-- outage or a failover before it reclaims it, so it must know the duration, not only the end.
-- NULL on attempts made before this file (the scanner then uses lease_expires_at - started_at).
ALTER TABLE workflow.attempts ADD COLUMN lease_ms bigint CHECK (lease_ms > 0);
