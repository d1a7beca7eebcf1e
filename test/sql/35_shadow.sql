-- Shadow mode: the comparison of each old/new answer pair, the daily
\set SHOW_CONTEXT never
-- partitions of canary_shadow, the gate settings, and the Stage 1 reports
-- (summary and gate, openings, length histogram, per prompt class).
-- Every row here belongs to rollouts this file creates.

-- settings: defaults and validation
INSERT INTO canary_config (name, old_model, new_model) VALUES ('shadowtest', 'model-old', 'model-new');
SELECT shadow_equivalence_threshold, shadow_min_agreement, shadow_max_refusal_delta, shadow_max_length_ratio
  FROM canary_config WHERE name = 'shadowtest';
UPDATE canary_config SET shadow_equivalence_threshold = 1.5 WHERE name = 'shadowtest';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET shadow_equivalence_threshold = NULL WHERE name = 'shadowtest';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET shadow_min_agreement = -0.1 WHERE name = 'shadowtest';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET shadow_max_refusal_delta = 2 WHERE name = 'shadowtest';
\echo :LAST_ERROR_SQLSTATE
UPDATE canary_config SET shadow_max_length_ratio = 0.9 WHERE name = 'shadowtest';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO canary_config (name, shadow_equivalence_threshold) VALUES ('shadowbad', 0);
SELECT name, shadow_equivalence_threshold FROM canary_config WHERE name = 'shadowbad';
DELETE FROM canary_config WHERE name = 'shadowbad';

-- the comparison, pair by pair
SELECT t.label, c.verdict, c.similarity, c.old_opening, c.new_opening, c.length_ratio
  FROM (VALUES
    (1, 'identical up to whitespace',
     'Thank you for contacting support.  Your order ships on Monday.',
     E' Thank you for contacting support.\nYour order ships on Monday.\t'),
    (2, 'case differs: equivalent',
     'Hello World', 'hello world'),
    (3, 'one word less: 8/9',
     'The order ships on Monday and arrives on Wednesday.',
     'The order ships on Monday and arrives Wednesday.'),
    (4, 'tone drift: different',
     'Thanks for reaching out. Your order ships on Monday.',
     'Thank you for contacting support. Your order ships on Monday.'),
    (5, 'repeated words count: 2/4',
     'word word word word', 'word word'),
    (6, 'apostrophes stay in words',
     'I''m sorry, but I can''t help with that.', 'I’m sorry — I can’t do that!'),
    (7, 'new model failed',
     'Thanks for reaching out.', NULL),
    (8, 'old answer empty',
     '', 'Something.'),
    (9, 'no words on either side',
     '...', '!!!')
  ) AS t(n, label, o, nw),
  LATERAL canary_shadow_compare(t.o, t.nw) c
 ORDER BY t.n;
-- the threshold decides between equivalent and different
SELECT verdict, similarity FROM canary_shadow_compare('a b c d e f g h i', 'a b c d e f g h', 0.9);
SELECT verdict, similarity FROM canary_shadow_compare('a b c d e f g h i', 'a b c d e f g h', 0.875);

-- partitions: the default one and eight UTC days from the day of installation
SELECT count(*) FILTER (WHERE c.relname = 'canary_shadow_default') AS default_partition,
       count(*) FILTER (WHERE c.relname ~ '^canary_shadow_[0-9]{8}$') AS daily_partitions,
       max(to_date(substr(c.relname, 15), 'YYYYMMDD')) FILTER (WHERE c.relname ~ '^canary_shadow_[0-9]{8}$')
       - min(to_date(substr(c.relname, 15), 'YYYYMMDD')) FILTER (WHERE c.relname ~ '^canary_shadow_[0-9]{8}$') AS span_days
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'canary_shadow'::regclass;
-- existing partitions are skipped
SELECT canary_shadow_create_partitions(min(to_date(substr(c.relname, 15), 'YYYYMMDD')), 8) AS created
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'canary_shadow'::regclass AND c.relname ~ '^canary_shadow_[0-9]{8}$';
-- a row beyond the daily partitions waits in the default partition and moves
-- into its day's partition when that is created
INSERT INTO canary_shadow (request_id, ts, canary, old_text, new_text)
VALUES ('00000000-0000-0000-0000-000000002099', '2099-01-01 12:00:00+00', 'shadowtest', 'x', 'x');
SELECT tableoid::regclass AS partition FROM canary_shadow WHERE ts >= '2099-01-01';
SELECT canary_shadow_create_partitions('2099-01-01', 2) AS created;
SELECT tableoid::regclass AS partition, verdict FROM canary_shadow WHERE ts >= '2099-01-01';
SELECT pg_get_expr(c.relpartbound, c.oid) AS bounds
  FROM pg_class c WHERE c.relname = 'canary_shadow_20990101';
DROP TABLE canary_shadow_20990101, canary_shadow_20990102;
-- what pg_dump copies: the rows of the tables registered here, and every
-- daily partition with its rows (none is a member of the extension)
SELECT unnest(extconfig)::regclass::text AS dumped FROM pg_extension WHERE extname = 'llm_canary' ORDER BY 1;
SELECT count(*) AS member_daily_partitions
  FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
 WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary')
   AND c.relname ~ '_[0-9]{8}$';
SELECT canary_shadow_create_partitions('2099-01-01', -1);
\echo :LAST_ERROR_SQLSTATE

-- the trigger fills the comparison with the rollout's threshold (0.8 when
-- the rollout is gone), and again when an answer changes
INSERT INTO canary_config (name, shadow_equivalence_threshold) VALUES ('shadowcmp', 0.9);
INSERT INTO canary_shadow (request_id, ts, canary, old_text, new_text)
VALUES ('00000000-0000-0000-0000-000000000001', now() - interval '1 minute', 'shadowcmp',
        'The order ships on Monday and arrives on Wednesday.',
        'The order ships on Monday and arrives Wednesday.'),
       ('00000000-0000-0000-0000-000000000002', now() - interval '1 minute', 'no-such-rollout',
        'The order ships on Monday and arrives on Wednesday.',
        'The order ships on Monday and arrives Wednesday.'),
       ('00000000-0000-0000-0000-000000000003', now() - interval '1 minute', 'shadowcmp',
        'Thanks for reaching out.', NULL);
SELECT request_id, canary, verdict, similarity, old_opening, new_opening, length_ratio
  FROM canary_shadow WHERE canary IN ('shadowcmp', 'no-such-rollout') ORDER BY request_id;
UPDATE canary_shadow SET new_text = 'Thanks for reaching out.', verdict = 'different'
 WHERE request_id = '00000000-0000-0000-0000-000000000003';
SELECT verdict, similarity, new_opening, length_ratio
  FROM canary_shadow WHERE request_id = '00000000-0000-0000-0000-000000000003';
DELETE FROM canary_shadow WHERE canary = 'no-such-rollout';

/*
 * The article's Tuesday: 100 shadowed requests, the new model opens with
 * "Thank you for contacting support" 84 times, the old one 11 times.
 *   old: i 1..11  A (long),  i 12..71 B,  i 72..100 C
 *   new: i 1..84  A (long),  i 85..100 B (long)
 * so 11 identical and 89 different pairs; refusals: old 1, new 10.
 */
INSERT INTO canary_shadow (request_id, ts, canary, old_text, new_text, old_refusal, new_refusal)
SELECT md5('shadowtest' || i)::uuid, now() - i * interval '1 minute', 'shadowtest',
       CASE WHEN i <= 11 THEN 'Thank you for contacting support. Your order ships on Monday. Tracking details follow by email, and you can reply here with any other questions.'
            WHEN i <= 71 THEN 'Thanks for reaching out. Your order ships on Monday.'
            ELSE 'Hi there, your order ships on Monday.' END,
       CASE WHEN i <= 84 THEN 'Thank you for contacting support. Your order ships on Monday. Tracking details follow by email, and you can reply here with any other questions.'
            ELSE 'Thanks for reaching out. Your order ships on Monday. Tracking details follow by email, and you can reply here with any other questions.' END,
       i = 100, i > 90
  FROM generate_series(1, 100) i;
SELECT verdict, count(*), round(min(similarity)::numeric, 4) AS min_sim, round(max(similarity)::numeric, 4) AS max_sim
  FROM canary_shadow WHERE canary = 'shadowtest' GROUP BY verdict ORDER BY verdict;

SELECT * FROM canary_shadow_openings('shadowtest');
SELECT opening, old_share, new_share FROM canary_shadow_openings('shadowtest', '7 days', 1);

\x on
SELECT * FROM canary_shadow_report('shadowtest');
\x off

/*
 * A rollout ready to advance: 22 paired answers (18 identical, 2 equivalent,
 * 2 different), refusals old 1 new 2, two failed new answers, and one row
 * ten days old that the default window leaves out.
 */
INSERT INTO canary_config (name, old_model, new_model) VALUES ('shadowready', 'model-old', 'model-new');
INSERT INTO canary_shadow (request_id, ts, canary, prompt_class, old_text, new_text,
                           old_refusal, new_refusal, new_error)
SELECT md5('shadowready' || j)::uuid,
       now() - CASE WHEN j = 25 THEN interval '10 days' ELSE j * interval '1 minute' END,
       'shadowready',
       CASE WHEN j <= 10 THEN 'billing' WHEN j <= 16 THEN 'shipping' WHEN j <= 20 THEN 'legal' END,
       CASE WHEN j <= 10 OR j = 25 THEN 'Your invoice is attached. Let me know if anything looks wrong.'
            WHEN j <= 16 THEN 'Your parcel left the warehouse this morning.'
            WHEN j <= 20 THEN 'Please consult the terms of service, section 4.'
            WHEN j <= 22 THEN 'The store opens at nine on weekdays.'
            ELSE 'Hello.' END,
       CASE WHEN j <= 10 OR j = 25 THEN 'Your invoice is attached. Let me know if anything looks wrong.'
            WHEN j <= 16 THEN 'Your parcel left the warehouse this morning.'
            WHEN j <= 18 THEN 'Please consult the terms of service, section 4.'
            WHEN j <= 20 THEN 'We cannot give legal advice here, sorry.'
            WHEN j <= 22 THEN 'The store opens at nine on all weekdays.' END,
       j = 1, j IN (1, 11),
       CASE j WHEN 23 THEN 'timeout' WHEN 24 THEN 'HTTP 500' END
  FROM generate_series(1, 25) j;

\x on
SELECT * FROM canary_shadow_report('shadowready');
\x off
SELECT samples, paired, ready FROM canary_shadow_report('shadowready', '30 days');
SELECT * FROM canary_shadow_by_class('shadowready');

-- the same data against stricter gates, then with the gates switched off
UPDATE canary_config SET shadow_min_agreement = 0.95, shadow_max_refusal_delta = 0.04
 WHERE name = 'shadowready';
SELECT ready, reasons FROM canary_shadow_report('shadowready');
UPDATE canary_config SET shadow_min_agreement = NULL, shadow_max_refusal_delta = NULL,
                         shadow_max_length_ratio = NULL
 WHERE name = 'shadowready';
SELECT ready, reasons FROM canary_shadow_report('shadowready');

/*
 * Lengths: old answers of 10, 20, 20, 35, 50 and 5 characters (the last one
 * without a new answer), new answers of 40, 60, 80, 100, 100.
 */
INSERT INTO canary_config (name, old_model, new_model) VALUES ('shadowlen', 'model-old', 'model-new');
INSERT INTO canary_shadow (request_id, ts, canary, old_text, new_text, new_error)
SELECT md5('shadowlen' || k)::uuid, now() - k * interval '1 minute', 'shadowlen',
       repeat('a', o), repeat('b', n), CASE WHEN n IS NULL THEN 'timeout' END
  FROM (VALUES (1, 10, 40), (2, 20, 60), (3, 20, 80), (4, 35, 100), (5, 50, 100), (6, 5, NULL))
       AS v(k, o, n);
SELECT * FROM canary_shadow_lengths('shadowlen', '1 day', 5);
SELECT bucket, lower, upper, old_count, new_count FROM canary_shadow_lengths('shadowlen', '1 day', 1);
SELECT old_mean_length, new_mean_length, mean_length_ratio, old_p50_length, new_p50_length,
       p50_length_ratio, old_p95_length, new_p95_length, p95_length_ratio,
       new_error_rate, new_timeout_rate, ready, reasons
  FROM canary_shadow_report('shadowlen');
-- jobs the new model never received (the fleet's fail-safe, a shutdown)
-- are samples, but not in the new model's error and timeout rates:
-- still 1 timeout of 6
INSERT INTO canary_shadow (request_id, ts, canary, old_text, new_error)
VALUES (md5('shadowlen7')::uuid, now() - interval '7 minutes', 'shadowlen', 'aaaaa', 'fail_safe'),
       (md5('shadowlen8')::uuid, now() - interval '8 minutes', 'shadowlen', 'aaaaa', 'shutdown');
SELECT samples, new_error_rate, new_timeout_rate FROM canary_shadow_report('shadowlen');
DELETE FROM canary_shadow WHERE request_id IN (md5('shadowlen7')::uuid, md5('shadowlen8')::uuid);

-- new answers much shorter than the old ones
INSERT INTO canary_config (name, old_model, new_model) VALUES ('shadowshort', 'model-old', 'model-new');
INSERT INTO canary_shadow (request_id, canary, old_text, new_text)
VALUES ('00000000-0000-0000-0000-000000000004', 'shadowshort', 'word word word word', 'word word');
SELECT ready, reasons FROM canary_shadow_report('shadowshort');

-- no samples, and no paired answers
INSERT INTO canary_config (name) VALUES ('shadowempty');
SELECT samples, paired, agreement, ready,
       regexp_replace(reasons[1], '[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8}', 'TIMESTAMP') AS reason
  FROM canary_shadow_report('shadowempty');
SELECT count(*) AS openings FROM canary_shadow_openings('shadowempty');
SELECT count(*) AS buckets FROM canary_shadow_lengths('shadowempty');
SELECT count(*) AS classes FROM canary_shadow_by_class('shadowempty');
INSERT INTO canary_shadow (request_id, canary, old_text, new_error)
VALUES ('00000000-0000-0000-0000-000000000005', 'shadowempty', 'Hello.', 'timeout');
SELECT samples, paired, agreement, new_timeout_rate, ready, reasons FROM canary_shadow_report('shadowempty');

-- bad input
\set VERBOSITY terse
SELECT * FROM canary_shadow_report('no-such-rollout');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
DO $$
DECLARE
    h text;
BEGIN
    PERFORM canary_shadow_openings('no-such-rollout');
EXCEPTION WHEN undefined_object THEN
    GET STACKED DIAGNOSTICS h = PG_EXCEPTION_HINT;
    RAISE NOTICE 'hint lists the rollouts: %', h LIKE 'Existing rollouts: %shadowready, shadowshort, shadowtest%';
END;
$$;
SELECT * FROM canary_shadow_report(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_shadow_report('shadowtest', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_shadow_by_class('shadowtest', '-1 day');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_shadow_openings('shadowtest', '7 days', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_shadow_openings('shadowtest', '7 days', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_shadow_lengths('shadowtest', '7 days', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM canary_shadow_lengths('shadowtest', '7 days', NULL);
\echo :LAST_ERROR_SQLSTATE

/*
 * A row whose verdict is set although an answer is missing (a replica-mode
 * write skips the trigger that fills the verdict) counts in neither a
 * class's agreement nor the overall one, which use the same formula: class
 * a (1 of 2 pairs agree) is not worse than overall (1 of 2); counting the
 * stray verdict overall, as before, read overall as 1.0 and flagged a.
 */
INSERT INTO canary_config (name, old_model, new_model) VALUES ('shadowrepl', 'model-old', 'model-new');
SET session_replication_role = replica;
INSERT INTO canary_shadow (request_id, canary, prompt_class, old_text, new_text, verdict)
VALUES (md5('shadowrepl1')::uuid, 'shadowrepl', 'a', 'Yes.', 'Yes.', 'identical'),
       (md5('shadowrepl2')::uuid, 'shadowrepl', 'a', 'Yes.', 'No, never.', 'different'),
       (md5('shadowrepl3')::uuid, 'shadowrepl', 'b', 'Yes.', NULL, 'identical');
RESET session_replication_role;
SELECT * FROM canary_shadow_by_class('shadowrepl');
DELETE FROM canary_shadow WHERE canary = 'shadowrepl';
DELETE FROM canary_config WHERE name = 'shadowrepl';
