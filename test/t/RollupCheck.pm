# The rollups checked against the raw rows: canary_rollups recounted from
# canary_requests and canary_feedback (every counter, both histograms),
# exactly.  Used by the rollups, upgrade and Prometheus tests.
package RollupCheck;

use strict;
use warnings;
use Exporter 'import';

our @EXPORT = qw(rollup_recount_query);

# A query returning the number of rollup rows that differ from a recount of
# the raw rows (in either direction): 0 when they agree.  The verdicts count
# under the key of their request's first attempt, as the trigger does; those
# still queued in canary_feedback_pending (not yet folded) count with the
# rollups, so that the query holds at any moment.
sub rollup_recount_query
{
	return q{
WITH req AS (
  SELECT canary, canary_rollup_bucket(ts) AS bucket_end, coalesce(stage, '') AS stage,
         coalesce(cohort, '') AS cohort, coalesce(model, '') AS model,
         coalesce(fallback, false) AS fallback, cached,
         count(*) AS requests,
         count(*) FILTER (WHERE outcome = 'ok') AS outcome_ok,
         count(*) FILTER (WHERE outcome = 'refusal') AS outcome_refusal,
         count(*) FILTER (WHERE outcome = 'error') AS outcome_error,
         count(*) FILTER (WHERE outcome = 'timeout') AS outcome_timeout,
         count(*) FILTER (WHERE refusal) AS refusals,
         coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
         coalesce(sum(completion_tokens), 0) AS completion_tokens,
         count(completion_tokens) AS completions, coalesce(sum(cost), 0) AS cost,
         count(latency_ms) AS latency_count, coalesce(sum(latency_ms), 0) AS latency_sum,
         canary_hist_agg(latency_ms) AS latency_hist, canary_hist_agg(completion_tokens) AS tokens_hist
    FROM canary_requests GROUP BY 1, 2, 3, 4, 5, 6, 7),
fb AS (
  SELECT coalesce(a.canary, f.canary) AS canary, canary_rollup_bucket(coalesce(a.ts, f.ts)) AS bucket_end,
         coalesce(a.stage, '') AS stage, coalesce(a.cohort, f.cohort, '') AS cohort,
         coalesce(a.model, f.model, '') AS model, coalesce(a.fallback, false) AS fallback,
         coalesce(a.cached, false) AS cached,
         count(*) FILTER (WHERE f.thumbs_down) AS thumbs_down, count(*) AS verdicts
    FROM canary_feedback f
    LEFT JOIN LATERAL (SELECT * FROM canary_requests q WHERE q.request_id = f.request_id
                        ORDER BY q.ts LIMIT 1) a ON true
   GROUP BY 1, 2, 3, 4, 5, 6, 7),
recount AS (
  SELECT canary, bucket_end, stage, cohort, model, fallback, cached,
         coalesce(req.requests, 0), coalesce(req.outcome_ok, 0), coalesce(req.outcome_refusal, 0),
         coalesce(req.outcome_error, 0), coalesce(req.outcome_timeout, 0), coalesce(req.refusals, 0),
         coalesce(fb.thumbs_down, 0), coalesce(fb.verdicts, 0),
         coalesce(req.prompt_tokens, 0), coalesce(req.completion_tokens, 0), coalesce(req.completions, 0),
         coalesce(req.cost, 0), coalesce(req.latency_count, 0), coalesce(req.latency_sum, 0),
         coalesce(req.latency_hist, '{}'), coalesce(req.tokens_hist, '{}')
    FROM req FULL JOIN fb USING (canary, bucket_end, stage, cohort, model, fallback, cached)),
pending AS (
  SELECT canary, bucket_end, stage, cohort, model, fallback, cached,
         sum(thumbs_down) AS thumbs_down, sum(verdicts) AS verdicts
    FROM canary_feedback_pending GROUP BY 1, 2, 3, 4, 5, 6, 7),
rolled AS (
  SELECT canary, bucket_end, stage, cohort, model, fallback, cached, coalesce(r.requests, 0),
         coalesce(r.outcome_ok, 0), coalesce(r.outcome_refusal, 0), coalesce(r.outcome_error, 0),
         coalesce(r.outcome_timeout, 0), coalesce(r.refusals, 0),
         coalesce(r.thumbs_down, 0) + coalesce(p.thumbs_down, 0), coalesce(r.verdicts, 0) + coalesce(p.verdicts, 0),
         coalesce(r.prompt_tokens, 0), coalesce(r.completion_tokens, 0), coalesce(r.completions, 0),
         coalesce(r.cost, 0), coalesce(r.latency_count, 0), coalesce(r.latency_sum, 0),
         coalesce(r.latency_hist, '{}'), coalesce(r.tokens_hist, '{}')
    FROM canary_rollups r FULL JOIN pending p USING (canary, bucket_end, stage, cohort, model, fallback, cached))
SELECT (SELECT count(*) FROM (SELECT * FROM recount EXCEPT ALL SELECT * FROM rolled) a)
     + (SELECT count(*) FROM (SELECT * FROM rolled EXCEPT ALL SELECT * FROM recount) b)};
}

1;
