-- A run is written twice: opened by the claim, closed by the finish. Closing it changed
-- `status`, which the two partial indexes below name in their predicates, so every close
-- was a non-HOT update: a new row version elsewhere in the table and new entries in the
-- primary key and the (task_id, run_number) index. Without them a close changes no indexed
-- column, and with half of each page kept free it lands on the run's own page (HOT): no
-- index entries at all. A drain of no-op tasks ran ~14% faster for it.
--
-- What the indexes served now goes through the task: a running run is always its task's
-- current run, and that task is `in_progress` with the run's worker as `assigned_worker`
-- (the rules close a task's running run whenever its status changes). The running tasks
-- are few next to the runs, so the reaper finds expired leases among them, and heartbeats
-- and unregistering find a worker's runs through the index below.
DROP INDEX runs_lease;
DROP INDEX runs_worker;
CREATE INDEX tasks_running_worker ON tasks (assigned_worker) WHERE status = 'in_progress';
-- Room on each page for its runs' closed versions. The table takes up to twice the space
-- it would packed full.
ALTER TABLE runs SET (fillfactor = 50);
