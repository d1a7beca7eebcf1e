/*
 * The baseline at stage full (sql/parts/50_killswitch.sql): a partial index
 * of the control summaries with traffic, which LastControlBaseline
 * (src/killswitch.c) probes instead of reading every summary since the
 * rollout went full.  Built here over the summaries 1.0 kept: CREATE INDEX
 * holds a SHARE lock on canary_window_summaries (the checks' INSERTs wait)
 * until the update commits, as 60_decisions.sql's ALTER TABLE already does
 * with its stronger lock: 2.3 s for 4.9 million summaries, 9.2 s for 19.7
 * million (README, "Upgrading").
 */
CREATE INDEX canary_window_summaries_baseline_idx ON canary_window_summaries (canary, at)
    WHERE cohort = 'control' AND samples > 0;

/*
 * The alerts the webhook has still to deliver (sql/parts/50_killswitch.sql):
 * the worker's claim, about once a second, read every alert ever raised.
 * Small (alerts are kept, but few): built in a moment.
 */
CREATE INDEX canary_alerts_pending_idx ON canary_alerts (id) WHERE webhook_status = 'pending';
