-- regent:expand
-- Rolling upgrades (issue 28). Each migration is recorded with its kind:
--   expand:   binaries that know only the versions before it keep working (new tables,
--             nullable or defaulted columns, new functions beside old ones);
--   contract: it removes what only older binaries use, and is applied when an operator asks
--             (`regent migrate --contract`) once no older binary runs;
--   breaking: the binary that ships it needs it and older binaries cannot run after it.
-- A schema's compatibility floor is its newest applied contract or breaking migration: a
-- binary runs against the schema when it knows at least that version, even when the database
-- is ahead of it by expand migrations (an older pod during `kubectl rollout`, or after
-- `rollout undo`). Every file applied before this one counts as breaking, as it was written
-- before kinds existed. This file only adds a defaulted column, so it is itself an expand:
-- the binaries before it cannot tell, as they refuse any database ahead of them.
ALTER TABLE engine.migrations
    ADD COLUMN kind text NOT NULL DEFAULT 'breaking' CHECK (kind IN ('expand', 'contract', 'breaking'));
COMMENT ON COLUMN engine.migrations.kind IS
    'expand: earlier binaries keep working; contract/breaking: they do not (the floor); contract waits for migrate --contract';
