-- A finished subtask an operator puts back in the queue stops counting as finished: its
-- plan's tally takes the count back, in whichever shard the requeueing connection writes.
-- A plan's counts are the sum of its row and its shards, so one shard may go below zero.
ALTER TABLE plan_tallies
    DROP CONSTRAINT plan_tallies_completed_check,
    DROP CONSTRAINT plan_tallies_failed_check,
    DROP CONSTRAINT plan_tallies_cancelled_check;
