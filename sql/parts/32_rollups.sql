/*
 * Rollups: what every summary reads instead of the raw rows.
 *
 * canary_rollups holds one row per 30-second bucket and per rollout, fleet
 * member, stage, cohort, model, fallback and cached: counts per outcome,
 * refusals, thumbs-down, token and cost sums and two histograms (latency,
 * completion tokens).  A bucket holds the attempts with ts in
 * (bucket_end - 30 s, bucket_end], so that the kill switch's window
 * (at - window, at] is a whole number of buckets when at and the window are
 * multiples of 30 s.  canary_rollup_totals holds the same counters summed
 * since install, per rollout, member, model, cohort and fallback: the
 * Prometheus counters, monotonic and cheap whatever the retention.
 *
 * Both are written by statement-level triggers on canary_requests and
 * canary_feedback, in the transaction that writes the raw rows, so every
 * path that adds rows (the worker's batches, canary_feedback(), a backfill
 * with INSERT or COPY, the simulator) adds to the rollups exactly once.
 *
 * Histograms are sparse int8 arrays {bucket, count, bucket, count, ...} in
 * bucket order over a log-linear scheme (src/rollups.c): values 0..64
 * exactly, then 32 buckets per power of two, so that a quantile read from a
 * histogram is within 1/64 (1.6 %) of percentile_cont over the same values.
 */

CREATE TABLE canary_rollups (
    canary              text NOT NULL,
    bucket_end          timestamptz NOT NULL,
    member              text NOT NULL DEFAULT '',
    stage               text NOT NULL,
    cohort              text NOT NULL,
    model               text NOT NULL,
    fallback            boolean NOT NULL,
    cached              boolean NOT NULL,
    requests            bigint NOT NULL DEFAULT 0,
    outcome_ok          bigint NOT NULL DEFAULT 0,
    outcome_refusal     bigint NOT NULL DEFAULT 0,
    outcome_error       bigint NOT NULL DEFAULT 0,
    outcome_timeout     bigint NOT NULL DEFAULT 0,
    refusals            bigint NOT NULL DEFAULT 0,
    thumbs_down         bigint NOT NULL DEFAULT 0,
    verdicts            bigint NOT NULL DEFAULT 0,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    completions         bigint NOT NULL DEFAULT 0,
    cost                numeric NOT NULL DEFAULT 0,
    latency_count       bigint NOT NULL DEFAULT 0,
    latency_sum         bigint NOT NULL DEFAULT 0,
    latency_hist        int8[] NOT NULL DEFAULT '{}',
    tokens_hist         int8[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (canary, bucket_end, member, stage, cohort, model, fallback, cached)
);
CREATE INDEX canary_rollups_bucket_end_idx ON canary_rollups (bucket_end);
COMMENT ON TABLE canary_rollups IS
    '30-second rollups of canary_requests and canary_feedback, written with the raw rows; kept llm_canary.rollup_retention_days days';
COMMENT ON COLUMN canary_rollups.canary IS 'Rollout (canary_config.name)';
COMMENT ON COLUMN canary_rollups.bucket_end IS
    'End of the 30-second bucket: the attempts with ts in (bucket_end - 30 s, bucket_end]';
COMMENT ON COLUMN canary_rollups.member IS
    'Fleet member that wrote the rows ('''' on a single server)';
COMMENT ON COLUMN canary_rollups.stage IS 'Stage of the attempts ('''' when not recorded)';
COMMENT ON COLUMN canary_rollups.cohort IS 'canary or control ('''' when not recorded)';
COMMENT ON COLUMN canary_rollups.model IS 'Model of the attempts ('''' when not recorded)';
COMMENT ON COLUMN canary_rollups.fallback IS 'Attempts that served a canary user with the old model after the new model failed';
COMMENT ON COLUMN canary_rollups.cached IS 'Attempts answered from canary_response_cache';
COMMENT ON COLUMN canary_rollups.requests IS 'Attempts (rows of canary_requests)';
COMMENT ON COLUMN canary_rollups.outcome_ok IS 'Attempts with outcome ok';
COMMENT ON COLUMN canary_rollups.outcome_refusal IS 'Attempts with outcome refusal';
COMMENT ON COLUMN canary_rollups.outcome_error IS 'Attempts with outcome error';
COMMENT ON COLUMN canary_rollups.outcome_timeout IS 'Attempts with outcome timeout';
COMMENT ON COLUMN canary_rollups.refusals IS 'Attempts whose answer was a refusal (canary_requests.refusal)';
COMMENT ON COLUMN canary_rollups.thumbs_down IS
    'Thumbs-down verdicts on the attempts of this row (counted in the bucket of the request, not of the verdict)';
COMMENT ON COLUMN canary_rollups.verdicts IS 'All verdicts (thumbs down or not) on the attempts of this row';
COMMENT ON COLUMN canary_rollups.prompt_tokens IS 'Sum of prompt_tokens';
COMMENT ON COLUMN canary_rollups.completion_tokens IS 'Sum of completion_tokens';
COMMENT ON COLUMN canary_rollups.completions IS 'Attempts with completion_tokens recorded';
COMMENT ON COLUMN canary_rollups.cost IS 'Sum of cost';
COMMENT ON COLUMN canary_rollups.latency_count IS 'Attempts with latency_ms recorded';
COMMENT ON COLUMN canary_rollups.latency_sum IS 'Sum of latency_ms';
COMMENT ON COLUMN canary_rollups.latency_hist IS
    'Histogram of latency_ms: {bucket, count, ...}, log-linear buckets (canary_hist_quantile reads it)';
COMMENT ON COLUMN canary_rollups.tokens_hist IS
    'Histogram of completion_tokens, same scheme as latency_hist';

CREATE TABLE canary_rollup_totals (
    canary              text NOT NULL,
    member              text NOT NULL DEFAULT '',
    model               text NOT NULL,
    cohort              text NOT NULL,
    fallback            boolean NOT NULL,
    requests            bigint NOT NULL DEFAULT 0,
    outcome_ok          bigint NOT NULL DEFAULT 0,
    outcome_refusal     bigint NOT NULL DEFAULT 0,
    outcome_error       bigint NOT NULL DEFAULT 0,
    outcome_timeout     bigint NOT NULL DEFAULT 0,
    refusals            bigint NOT NULL DEFAULT 0,
    thumbs_down         bigint NOT NULL DEFAULT 0,
    verdicts            bigint NOT NULL DEFAULT 0,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    completions         bigint NOT NULL DEFAULT 0,
    cost                numeric NOT NULL DEFAULT 0,
    latency_count       bigint NOT NULL DEFAULT 0,
    latency_sum         bigint NOT NULL DEFAULT 0,
    latency_hist        int8[] NOT NULL DEFAULT '{}',
    tokens_hist         int8[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (canary, member, model, cohort, fallback)
);
COMMENT ON TABLE canary_rollup_totals IS
    'The counters of canary_rollups summed since install per rollout, member, model, cohort and fallback (never pruned): the Prometheus counters';
COMMENT ON COLUMN canary_rollup_totals.member IS
    'Fleet member that wrote the rows ('''' on a single server)';

SELECT pg_catalog.pg_extension_config_dump('canary_rollups', '');
SELECT pg_catalog.pg_extension_config_dump('canary_rollup_totals', '');
