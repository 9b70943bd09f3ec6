-- The statement trigger that keeps per-minute throughput joins the rows a
-- statement changed, before and after, by id. PostgreSQL cannot tell how many
-- rows such transition tables hold and guesses one, so it joined them with a
-- nested loop: a batch ack of 1,000 jobs compared a million pairs, most of
-- its time. Without nested loops the join is hashed; the trigger's other
-- statement has no join and is unaffected.
ALTER FUNCTION jobs_counts_updated() SET enable_nestloop TO off;
