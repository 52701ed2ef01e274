-- regent:contract
-- The first contract migration (issue 28's expand/contract rule): drops the function
-- signatures workflow 0012 and 0014 kept beside their replacements so that binaries before
-- them could finish a rollout. No binary that can run against this schema calls them any more
-- (every release since workflow 0014 calls the new signatures, and the floor has been at
-- 0016 since v0.2.0); they remain only as a way around the lease holder's token and the
-- version choice. Applied by `regent migrate --contract` once every node runs this release;
-- after it, the floor is 0025 and v0.2.0 (workflow 16) is refused. The live definitions of the
-- signatures that stay are in sql/workflow/functions/. Takes no table lock.
DROP FUNCTION workflow.claim(text, text, text[], text[], bigint, integer);
DROP FUNCTION workflow.complete(jsonb);
DROP FUNCTION workflow.complete_and_claim(jsonb, text, text, text[], text[], bigint, integer);
DROP FUNCTION workflow.fail(jsonb, bigint, bigint);
DROP FUNCTION workflow.start_run(text, jsonb, text, bigint, numeric, text, text, text, uuid, text[]);
