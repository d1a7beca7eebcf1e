/*
 * Shadow mode: in stage "shadow" the old model answers the user while the
 * new model answers the same prompt in the background (src/shadow.c); both
 * answers land in one row of canary_shadow.  The row is compared once, when
 * it is written, and the reports below read the comparison: the article's
 * Stage 1 numbers (output diff rate, length distribution, refusal rate,
 * per-prompt-class regressions, and the openings "tone-drift detector") and
 * a gate that says whether the rollout may leave shadow.
 */

/*
 * Per-rollout settings of the comparison and of the gate.  The gate settings
 * may be NULL: that condition is then not checked.
 */
ALTER TABLE canary_config
    ADD COLUMN shadow_equivalence_threshold numeric NOT NULL DEFAULT 0.8,
    ADD COLUMN shadow_min_agreement numeric DEFAULT 0.70,
    ADD COLUMN shadow_max_refusal_delta numeric DEFAULT 0.05,
    ADD COLUMN shadow_max_length_ratio numeric DEFAULT 1.3,
    ADD CONSTRAINT canary_config_shadow_check
        CHECK (shadow_equivalence_threshold BETWEEN 0 AND 1
               AND shadow_min_agreement BETWEEN 0 AND 1
               AND shadow_max_refusal_delta BETWEEN 0 AND 1
               AND shadow_max_length_ratio >= 1);
ALTER TABLE canary_config
    ADD COLUMN shadow_embedding_model text REFERENCES canary_models (name) ON UPDATE CASCADE;
COMMENT ON COLUMN canary_config.shadow_equivalence_threshold IS
    'Shadow rows whose similarity is at or above this (0 to 1) are "equivalent"';
COMMENT ON COLUMN canary_config.shadow_embedding_model IS
    'An OpenAI-compatible embeddings model (canary_models.name): shadow similarity is the cosine of the embeddings of both answers; NULL: lexical similarity';
COMMENT ON COLUMN canary_config.shadow_min_agreement IS
    'Gate: smallest share of identical or equivalent answers (0 to 1; NULL: not checked)';
COMMENT ON COLUMN canary_config.shadow_max_refusal_delta IS
    'Gate: largest |new - old| refusal rate (0 to 1; NULL: not checked)';
COMMENT ON COLUMN canary_config.shadow_max_length_ratio IS
    'Gate: mean new length / mean old length must lie in [1/this, this] (>= 1; NULL: not checked)';

/*
 * canary_config_validate does not know these columns; this trigger fires
 * after it (triggers fire in name order) with the same kind of errors.
 */
CREATE FUNCTION canary_config_shadow_validate()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    provider     text;
    known_models text;
BEGIN
    IF NEW.shadow_equivalence_threshold IS NULL THEN
        RAISE EXCEPTION 'shadow_equivalence_threshold of rollout "%" must not be NULL', NEW.name
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Use a similarity between 0 and 1; the default is 0.8.';
    END IF;
    IF NEW.shadow_equivalence_threshold NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'shadow_equivalence_threshold % of rollout "%" is out of range',
                        NEW.shadow_equivalence_threshold, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Use a similarity between 0 and 1; the default is 0.8.';
    END IF;
    IF NEW.shadow_min_agreement NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'shadow_min_agreement % of rollout "%" is out of range',
                        NEW.shadow_min_agreement, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Use a share between 0 and 1 (the article''s gate is 0.70), or NULL not to check it.';
    END IF;
    IF NEW.shadow_max_refusal_delta NOT BETWEEN 0 AND 1 THEN
        RAISE EXCEPTION 'shadow_max_refusal_delta % of rollout "%" is out of range',
                        NEW.shadow_max_refusal_delta, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Use a difference of refusal rates between 0 and 1 (default 0.05), or NULL not to check it.';
    END IF;
    IF NEW.shadow_embedding_model IS NOT NULL THEN
        SELECT m.provider INTO provider FROM @extschema@.canary_models m WHERE m.name = NEW.shadow_embedding_model;
        IF NOT FOUND THEN
            SELECT coalesce(string_agg(m.name, ', ' ORDER BY m.name), 'none yet') INTO known_models
              FROM @extschema@.canary_models m;
            RAISE EXCEPTION 'model "%" does not exist', NEW.shadow_embedding_model
                USING ERRCODE = 'foreign_key_violation',
                      HINT = format('Known models: %s. Add the embeddings model with INSERT INTO canary_models (name, provider, base_url, model).', known_models);
        END IF;
        IF provider <> 'openai' THEN
            RAISE EXCEPTION 'model "%" cannot be the shadow_embedding_model of rollout "%"',
                            NEW.shadow_embedding_model, NEW.name
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = format('Its provider is %s; embeddings are requested from an OpenAI-compatible POST {base_url}/embeddings.', provider),
                      HINT = 'Use a model with provider ''openai'' (OpenAI, vLLM, Ollama, llama.cpp serve /embeddings).';
        END IF;
    END IF;
    IF NEW.shadow_max_length_ratio < 1 THEN
        RAISE EXCEPTION 'shadow_max_length_ratio % of rollout "%" is out of range',
                        NEW.shadow_max_length_ratio, NEW.name
            USING ERRCODE = 'numeric_value_out_of_range',
                  HINT = 'Use a ratio of at least 1 (default 1.3 allows means from 1/1.3 to 1.3 times the old one), or NULL not to check it.';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER canary_config_c_shadow_validate
    BEFORE INSERT OR UPDATE ON canary_config
    FOR EACH ROW EXECUTE FUNCTION canary_config_shadow_validate();

/*
 * The comparison of two answers.
 *
 *   words       the maximal runs of word characters (\w: letters, digits,
 *               "_") and apostrophes (' and U+2019) of the lowercased text,
 *               so "I'm" is one word "i'm"; everything else separates words.
 *   identical   both texts equal after whitespace normalisation (leading and
 *               trailing whitespace removed, every run of whitespace made one
 *               space); case and punctuation count.
 *   (The patterns spell the classes [:alnum:]_ and [:space:] rather than
 *   \w and \s: a backslash in a plain literal is an escape in a session
 *   with standard_conforming_strings = off.)
 *   similarity  multiset Jaccard (Ruzicka) over the words:
 *                   sum over words w of min(old count w, new count w)
 *                   / sum over words w of max(old count w, new count w)
 *               = |old ∩ new| / (|old| + |new| - |old ∩ new|) as multisets;
 *               1 for identical texts and for two texts without words, 0 when
 *               exactly one has none.  Order does not count.
 *   verdict     identical; else equivalent when similarity >=
 *               equivalence_threshold; else different.  NULL (and similarity
 *               NULL) when either text is NULL, i.e. a model failed.
 *   opening     the first five words joined by single spaces ('' for a text
 *               without words, NULL for NULL): "Thank you for contacting
 *               support." gives "thank you for contacting support".
 *   length_ratio  length(new_text) / length(old_text) in characters; NULL
 *               when old_text is NULL or empty, or new_text is NULL.
 *
 * Cost, measured with EXPLAIN ANALYZE over 10,000 synthetic rows of two
 * 200-word (1200-character) texts, PostgreSQL 15 on a shared 2-core VM:
 * 0.33 to 0.48 ms per pair of different texts, 0.17 ms per pair of equal
 * texts, 0.41 to 0.53 ms per row INSERTed into canary_shadow with this
 * trigger.  Nearly all of it is the regular-expression split into words; the
 * multiset intersection is one INTERSECT ALL (a hash set operation).
 */
CREATE FUNCTION canary_shadow_compare(old_text text, new_text text,
                                      equivalence_threshold float8 DEFAULT 0.8,
                                      OUT verdict text, OUT similarity float8,
                                      OUT old_opening text, OUT new_opening text,
                                      OUT length_ratio float8)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_words text[];
    new_words text[];
    common    bigint;
    total     bigint;
BEGIN
    -- the split leaves '' at either end when a text starts or ends with a separator
    old_words := array_remove(regexp_split_to_array(lower(old_text), '[^[:alnum:]_''’]+'), '');
    old_opening := array_to_string(old_words[1:5], ' ');
    IF length(old_text) > 0 THEN
        length_ratio := length(new_text)::float8 / length(old_text);
    END IF;
    -- equal texts, frequent in shadow traffic, need one split and no more
    IF old_text = new_text THEN
        new_opening := old_opening;
        verdict := 'identical';
        similarity := 1;
        RETURN;
    END IF;
    new_words := array_remove(regexp_split_to_array(lower(new_text), '[^[:alnum:]_''’]+'), '');
    new_opening := array_to_string(new_words[1:5], ' ');
    IF old_text IS NULL OR new_text IS NULL THEN
        RETURN;
    END IF;

    -- equal words are necessary for identical texts: test that first, it is cheap
    IF old_words = new_words
       AND btrim(regexp_replace(old_text, '[[:space:]]+', ' ', 'g'), ' ')
           = btrim(regexp_replace(new_text, '[[:space:]]+', ' ', 'g'), ' ') THEN
        verdict := 'identical';
        similarity := 1;
        RETURN;
    END IF;

    total := cardinality(old_words) + cardinality(new_words);
    IF total = 0 THEN
        similarity := 1;
    ELSE
        SELECT count(*) INTO common
          FROM (SELECT unnest(old_words) INTERSECT ALL SELECT unnest(new_words)) s;
        similarity := common::float8 / (total - common);
    END IF;
    verdict := CASE WHEN similarity >= equivalence_threshold THEN 'equivalent' ELSE 'different' END;
END;
$$;
COMMENT ON FUNCTION canary_shadow_compare(text, text, float8) IS
    'Compare an old and a new answer: verdict (identical, equivalent, different), multiset Jaccard similarity of the words, openings (first five words) and length ratio new/old';

/*
 * One row per shadowed request, written by the shadow worker.  Partitioned by
 * day (UTC) so that old shadow traffic is dropped a partition at a time; rows
 * outside every daily partition land in canary_shadow_default.  No foreign
 * key to canary_config: the evidence outlives the rollout.
 */
CREATE TABLE canary_shadow (
    request_id      uuid NOT NULL,
    ts              timestamptz NOT NULL DEFAULT now(),
    canary          text NOT NULL,
    user_id         text,
    prompt_hash     text,
    prompt          text,
    prompt_class    text,
    old_model       text,
    new_model       text,
    old_text        text,
    old_tokens      integer,
    old_latency_ms  integer,
    old_refusal     boolean,
    old_error       text,
    new_text        text,
    new_tokens      integer,
    new_latency_ms  integer,
    new_refusal     boolean,
    new_error       text,
    new_cached      boolean,
    -- filled from canary_shadow_compare() by the trigger below; the worker
    -- supplies similarity with similarity_method 'embedding' when the
    -- rollout has a shadow_embedding_model and the embeddings call worked
    verdict         text,
    similarity      float8,
    similarity_method text,
    old_opening     text,
    new_opening     text,
    length_ratio    float8
) PARTITION BY RANGE (ts);
CREATE INDEX canary_shadow_canary_ts_idx ON canary_shadow (canary, ts);
CREATE INDEX canary_shadow_request_id_idx ON canary_shadow (request_id);
CREATE TABLE canary_shadow_default PARTITION OF canary_shadow DEFAULT;
COMMENT ON TABLE canary_shadow IS
    'Shadow mode: the old and the new model''s answer to the same request, compared when written';
COMMENT ON COLUMN canary_shadow.verdict IS
    'identical, equivalent or different (see canary_shadow_compare); NULL when either answer is missing';
COMMENT ON COLUMN canary_shadow.new_error IS
    'Why the new model gave no answer; ''timeout'' when it did not answer in time';
COMMENT ON COLUMN canary_shadow.new_cached IS
    'The new model''s answer came from canary_response_cache (llm_canary.response_cache_ttl)';
COMMENT ON COLUMN canary_shadow.similarity_method IS
    'lexical (multiset Jaccard of the words) or embedding (cosine of the answers'' embeddings); NULL when there is no similarity';

/*
 * Create the daily partitions canary_shadow_YYYYMMDD for days UTC days from
 * from_day on; those that exist are skipped.  Rows already in the default
 * partition for such a day are moved into the new partition.  Returns the
 * number of partitions created.  canary_maintenance() does this daily for
 * every partitioned table; both go through canary_partition_days
 * (30_metrics.sql), which takes the locks.
 */
CREATE FUNCTION canary_shadow_create_partitions(from_day date DEFAULT (now() AT TIME ZONE 'UTC')::date,
                                                days integer DEFAULT 8)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF from_day IS NULL OR days IS NULL THEN
        RAISE EXCEPTION 'from_day and days must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'For example canary_shadow_create_partitions(current_date, 8).';
    END IF;
    IF days NOT BETWEEN 0 AND 366 THEN
        RAISE EXCEPTION 'days % is out of range', days
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Create between 0 and 366 daily partitions at a time.';
    END IF;
    RETURN (SELECT count(*)::integer FROM @extschema@.canary_partition_days('canary_shadow', from_day, days));
END;
$$;
COMMENT ON FUNCTION canary_shadow_create_partitions(date, integer) IS
    'Create the daily partitions of canary_shadow for the given number of UTC days from from_day; returns how many were created';

-- Fill the comparison columns when a row is written (and when its answers change).
CREATE FUNCTION canary_shadow_fill()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    threshold float8;
    supplied  float8;
BEGIN
    SELECT shadow_equivalence_threshold INTO threshold
      FROM @extschema@.canary_config WHERE name = NEW.canary;
    threshold := coalesce(threshold, 0.8);
    -- an embedding similarity written with the row (never a stale one on UPDATE)
    IF TG_OP = 'INSERT' AND NEW.similarity_method = 'embedding' AND NEW.similarity IS NOT NULL
       AND NEW.old_text IS NOT NULL AND NEW.new_text IS NOT NULL THEN
        supplied := NEW.similarity;
    END IF;
    SELECT c.verdict, c.similarity, c.old_opening, c.new_opening, c.length_ratio
      INTO NEW.verdict, NEW.similarity, NEW.old_opening, NEW.new_opening, NEW.length_ratio
      FROM @extschema@.canary_shadow_compare(NEW.old_text, NEW.new_text, threshold) c;
    IF supplied IS NOT NULL THEN
        NEW.similarity := supplied;
        NEW.similarity_method := 'embedding';
        IF NEW.verdict <> 'identical' THEN
            NEW.verdict := CASE WHEN supplied >= threshold THEN 'equivalent' ELSE 'different' END;
        END IF;
    ELSE
        NEW.similarity_method := CASE WHEN NEW.similarity IS NOT NULL THEN 'lexical' END;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER canary_shadow_fill
    BEFORE INSERT OR UPDATE OF old_text, new_text ON canary_shadow
    FOR EACH ROW EXECUTE FUNCTION canary_shadow_fill();

/*
 * Reports.  Each takes a rollout and a window (rows with ts >= now() - since)
 * and checks both through canary_report_window (45_summary.sql), which
 * returns the window's start.
 */
/*
 * The Stage 1 summary and gate.  "Paired" rows are those where both models
 * answered (old_text and new_text not NULL); every comparison is over them,
 * so both sides are measured on the same prompts:
 *   identical/equivalent/different_share  verdict counts / paired
 *   agreement           identical_share + equivalent_share
 *   old/new_refusal_rate  rows with x_refusal true / paired
 *   refusal_delta       new_refusal_rate - old_refusal_rate
 *   *_length            length in characters: mean, p50 and p95
 *                       (percentile_disc: an observed length)
 *   *_length_ratio      new / old of the same statistic
 * Over the rows whose new call was made (not new_error fail_safe or
 * shutdown: the fleet's fail-safe or a shutdown never sent them):
 * new_error_rate (new_error not NULL) and new_timeout_rate (new_error =
 * 'timeout').
 * ready: paired > 0, agreement >= shadow_min_agreement,
 * |refusal_delta| <= shadow_max_refusal_delta and
 * 1/shadow_max_length_ratio <= mean_length_ratio <= shadow_max_length_ratio
 * (a NULL setting is not checked); reasons lists each failed condition.
 * Rates are rounded to 4 decimals, ratios to 3, means to 1; the gate uses
 * the exact values.
 */
CREATE FUNCTION canary_shadow_report(canary text DEFAULT 'default', since interval DEFAULT '7 days')
RETURNS TABLE (samples bigint, paired bigint,
               identical_share numeric, equivalent_share numeric, different_share numeric,
               agreement numeric,
               old_refusal_rate numeric, new_refusal_rate numeric, refusal_delta numeric,
               old_mean_length numeric, new_mean_length numeric, mean_length_ratio numeric,
               old_p50_length integer, new_p50_length integer, p50_length_ratio numeric,
               old_p95_length integer, new_p95_length integer, p95_length_ratio numeric,
               new_error_rate numeric, new_timeout_rate numeric,
               ready boolean, reasons text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff  timestamptz := @extschema@.canary_report_window(canary_shadow_report.canary, since);
    cfg     record;
    s       record;
    agree   numeric;
    delta   numeric;
    ratio   numeric;
    why     text[] := '{}';
BEGIN
    SELECT * INTO cfg FROM @extschema@.canary_config c WHERE c.name = canary_shadow_report.canary;

    SELECT count(*) AS samples,
           count(*) FILTER (WHERE p) AS paired,
           count(*) FILTER (WHERE p AND verdict = 'identical') AS identical,
           count(*) FILTER (WHERE p AND verdict = 'equivalent') AS equivalent,
           count(*) FILTER (WHERE p AND verdict = 'different') AS different,
           count(*) FILTER (WHERE p AND old_refusal) AS old_refusals,
           count(*) FILTER (WHERE p AND new_refusal) AS new_refusals,
           avg(length(old_text)) FILTER (WHERE p) AS old_mean,
           avg(length(new_text)) FILTER (WHERE p) AS new_mean,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY length(old_text)) FILTER (WHERE p) AS old_p50,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY length(new_text)) FILTER (WHERE p) AS new_p50,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY length(old_text)) FILTER (WHERE p) AS old_p95,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY length(new_text)) FILTER (WHERE p) AS new_p95,
           count(*) FILTER (WHERE sent) AS sent,
           count(*) FILTER (WHERE sent AND new_error IS NOT NULL) AS errors,
           count(*) FILTER (WHERE new_error = 'timeout') AS timeouts
      INTO s
      FROM (SELECT r.*, r.old_text IS NOT NULL AND r.new_text IS NOT NULL AS p,
                   r.new_error IS NULL OR r.new_error NOT IN ('fail_safe', 'shutdown') AS sent
              FROM @extschema@.canary_shadow r
             WHERE r.canary = canary_shadow_report.canary AND r.ts >= cutoff) x;

    IF s.paired > 0 THEN
        agree := (s.identical + s.equivalent)::numeric / s.paired;
        delta := (s.new_refusals - s.old_refusals)::numeric / s.paired;
        ratio := s.new_mean / nullif(s.old_mean, 0);
    END IF;

    IF s.samples = 0 THEN
        why := why || format('no shadow samples since %s UTC',
                             to_char(cutoff AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'));
    ELSIF s.paired = 0 THEN
        why := why || format('no paired answers: the new model answered none of %s samples', s.samples);
    ELSE
        IF agree < cfg.shadow_min_agreement THEN
            why := why || format('agreement %s < %s (%s of %s paired answers identical or equivalent)',
                                 round(agree, 3), cfg.shadow_min_agreement,
                                 s.identical + s.equivalent, s.paired);
        END IF;
        IF abs(delta) > cfg.shadow_max_refusal_delta THEN
            why := why || format('refusal delta %s%s %s %s%s (old %s, new %s)',
                                 CASE WHEN delta > 0 THEN '+' END, round(delta, 3),
                                 CASE WHEN delta > 0 THEN '>' ELSE '<' END,
                                 CASE WHEN delta > 0 THEN '+' ELSE '-' END, cfg.shadow_max_refusal_delta,
                                 round(s.old_refusals::numeric / s.paired, 3),
                                 round(s.new_refusals::numeric / s.paired, 3));
        END IF;
        IF cfg.shadow_max_length_ratio IS NOT NULL THEN
            IF ratio IS NULL THEN
                why := why || 'mean length ratio undefined: the old answers are empty'::text;
            ELSIF ratio > cfg.shadow_max_length_ratio THEN
                why := why || format('mean length ratio %s > %s (new %s vs old %s characters)',
                                     round(ratio, 3), cfg.shadow_max_length_ratio,
                                     round(s.new_mean, 1), round(s.old_mean, 1));
            ELSIF ratio < 1 / cfg.shadow_max_length_ratio THEN
                why := why || format('mean length ratio %s < %s (1/%s) (new %s vs old %s characters)',
                                     round(ratio, 3), round(1 / cfg.shadow_max_length_ratio, 3),
                                     cfg.shadow_max_length_ratio,
                                     round(s.new_mean, 1), round(s.old_mean, 1));
            END IF;
        END IF;
    END IF;

    RETURN QUERY SELECT
        s.samples, s.paired,
        round(s.identical::numeric / nullif(s.paired, 0), 4),
        round(s.equivalent::numeric / nullif(s.paired, 0), 4),
        round(s.different::numeric / nullif(s.paired, 0), 4),
        round(agree, 4),
        round(s.old_refusals::numeric / nullif(s.paired, 0), 4),
        round(s.new_refusals::numeric / nullif(s.paired, 0), 4),
        round(delta, 4),
        round(s.old_mean, 1), round(s.new_mean, 1), round(ratio, 3),
        s.old_p50, s.new_p50, round(s.new_p50::numeric / nullif(s.old_p50, 0), 3),
        s.old_p95, s.new_p95, round(s.new_p95::numeric / nullif(s.old_p95, 0), 3),
        round(s.errors::numeric / nullif(s.sent, 0), 4),
        round(s.timeouts::numeric / nullif(s.sent, 0), 4),
        cardinality(why) = 0, why;
END;
$$;
COMMENT ON FUNCTION canary_shadow_report(text, interval) IS
    'Shadow mode summary of a rollout: verdict shares, refusal rates, lengths, new-model errors, and whether it is ready to leave shadow (with the reasons if not)';

/*
 * The openings, the article's cheapest tone-drift detector: the top n
 * openings by max(old count, new count), ties by opening; old_share is the
 * share among old answers (old_text not NULL), new_share among new answers;
 * delta = new_share - old_share; a bar is round(20 * share) blocks, so 20
 * blocks are 100 %.  An answer without words shows as '(no words)'.
 * The openings are the answers' first words: while the texts are private
 * (canary_set_shadow_private) a role that may not read them gets 42501.
 */
CREATE FUNCTION canary_shadow_openings(canary text DEFAULT 'default', since interval DEFAULT '7 days',
                                       n integer DEFAULT 20)
RETURNS TABLE (opening text, old_share numeric, new_share numeric, delta numeric,
               old_bar text, new_bar text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_report_window(canary_shadow_openings.canary, since);
BEGIN
    -- the openings are the first words of the answers: private like them
    -- (this function runs as its caller)
    IF NOT has_column_privilege('@extschema@.canary_shadow', 'new_opening', 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for the openings of shadow answers'
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'The openings are the first words of the answers, which are private to this role.',
                  HINT = 'Run the report as llm_canary_admin, or make the texts readable with canary_set_shadow_private(false).';
    END IF;
    IF n IS NULL THEN
        RAISE EXCEPTION 'n must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass how many openings to show, for example 20.';
    END IF;
    IF n < 1 THEN
        RAISE EXCEPTION 'n % must be at least 1', n
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass how many openings to show, for example 20.';
    END IF;
    RETURN QUERY
    WITH w AS (
        SELECT r.old_opening, r.new_opening
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_openings.canary AND r.ts >= cutoff
    ), totals AS (
        SELECT count(w.old_opening) AS old_total, count(w.new_opening) AS new_total FROM w
    ), counts AS (
        SELECT o.op, sum(o.old_n) AS old_n, sum(o.new_n) AS new_n
          FROM (SELECT w.old_opening AS op, 1 AS old_n, 0 AS new_n FROM w WHERE w.old_opening IS NOT NULL
                UNION ALL
                SELECT w.new_opening, 0, 1 FROM w WHERE w.new_opening IS NOT NULL) o
         GROUP BY o.op
    ), shares AS (
        SELECT c.op, greatest(c.old_n, c.new_n) AS top,
               c.old_n::numeric / nullif(t.old_total, 0) AS os,
               c.new_n::numeric / nullif(t.new_total, 0) AS ns
          FROM counts c, totals t
    )
    SELECT CASE WHEN sh.op = '' THEN '(no words)' ELSE sh.op END,
           round(sh.os, 4), round(sh.ns, 4), round(sh.ns - sh.os, 4),
           repeat('█', round(20 * coalesce(sh.os, 0))::integer),
           repeat('█', round(20 * coalesce(sh.ns, 0))::integer)
      FROM shares sh
     ORDER BY sh.top DESC, sh.op
     LIMIT n;
END;
$$;
COMMENT ON FUNCTION canary_shadow_openings(text, interval, integer) IS
    'The most frequent openings (first five words) of old and new answers with their shares: the tone-drift detector';

/*
 * Length histogram, old vs new, over common bounds: buckets equal-width
 * buckets over [0, L], L the longest answer of either model in the window;
 * bucket i holds lengths in [lower, upper), the last one also L
 * (width_bucket, with L put into the last bucket).  Each side counts its own
 * answers (x_text not NULL).  A bar is round(20 * count / largest count of
 * either side) blocks.  No rows when the window holds no answer.
 */
CREATE FUNCTION canary_shadow_lengths(canary text DEFAULT 'default', since interval DEFAULT '7 days',
                                      buckets integer DEFAULT 10)
RETURNS TABLE (bucket integer, lower numeric, upper numeric, old_count bigint, new_count bigint,
               old_bar text, new_bar text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_report_window(canary_shadow_lengths.canary, since);
BEGIN
    IF buckets IS NULL THEN
        RAISE EXCEPTION 'buckets must not be NULL'
            USING ERRCODE = 'null_value_not_allowed',
                  HINT = 'Pass the number of histogram buckets, for example 10.';
    END IF;
    IF buckets NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION 'buckets % is out of range', buckets
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Pass between 1 and 1000 histogram buckets, for example 10.';
    END IF;
    RETURN QUERY
    WITH w AS (
        SELECT length(r.old_text)::numeric AS ol, length(r.new_text)::numeric AS nl
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_lengths.canary AND r.ts >= cutoff
           AND (r.old_text IS NOT NULL OR r.new_text IS NOT NULL)
    ), top AS (
        -- a window of empty answers still gets a histogram: all in bucket 1
        SELECT greatest(max(w.ol), max(w.nl), 1) AS l FROM w HAVING count(*) > 0
    ), placed AS (
        -- least() skips NULLs: a missing answer must stay out of every bucket
        SELECT CASE WHEN w.ol IS NOT NULL THEN least(width_bucket(w.ol, 0, top.l, buckets), buckets) END AS ob,
               CASE WHEN w.nl IS NOT NULL THEN least(width_bucket(w.nl, 0, top.l, buckets), buckets) END AS nb
          FROM w, top
    ), old_counts AS (
        SELECT p.ob AS b, count(*) AS c FROM placed p WHERE p.ob IS NOT NULL GROUP BY p.ob
    ), new_counts AS (
        SELECT p.nb AS b, count(*) AS c FROM placed p WHERE p.nb IS NOT NULL GROUP BY p.nb
    ), hist AS (
        SELECT g AS b, top.l * (g - 1) / buckets AS lo, top.l * g / buckets AS hi,
               coalesce(oc.c, 0) AS oc, coalesce(nc.c, 0) AS nc
          FROM top
               CROSS JOIN generate_series(1, buckets) g
               LEFT JOIN old_counts oc ON oc.b = g
               LEFT JOIN new_counts nc ON nc.b = g
    ), scale AS (
        SELECT greatest(max(h.oc), max(h.nc), 1) AS m FROM hist h
    )
    SELECT h.b, round(h.lo, 1), round(h.hi, 1), h.oc, h.nc,
           repeat('█', round(20.0 * h.oc / scale.m)::integer),
           repeat('█', round(20.0 * h.nc / scale.m)::integer)
      FROM hist h, scale
     ORDER BY h.b;
END;
$$;
COMMENT ON FUNCTION canary_shadow_lengths(text, interval, integer) IS
    'Histogram of answer lengths in characters, old vs new model, over common bucket bounds';

/*
 * Per prompt class (NULL shown as '(none)'), over paired rows as in
 * canary_shadow_report: agreement, refusal_delta (new - old refusal rate),
 * mean_length_ratio (mean new / mean old length).  A class is
 * worse_than_overall when
 *     agreement < overall agreement - 0.10       (more than 10 points lower)
 *  or refusal_delta > overall refusal_delta + 0.05,
 * both over all paired rows of the window; note says which and by how much.
 * A class without paired rows is never flagged.  Flagged classes come first,
 * then by samples.
 */
CREATE FUNCTION canary_shadow_by_class(canary text DEFAULT 'default', since interval DEFAULT '7 days')
RETURNS TABLE (prompt_class text, samples bigint, paired bigint, agreement numeric,
               refusal_delta numeric, mean_length_ratio numeric,
               worse_than_overall boolean, note text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    cutoff timestamptz := @extschema@.canary_report_window(canary_shadow_by_class.canary, since);
BEGIN
    RETURN QUERY
    WITH w AS (
        SELECT coalesce(r.prompt_class, '(none)') AS cls,
               r.old_text IS NOT NULL AND r.new_text IS NOT NULL AS p,
               r.verdict, r.old_refusal, r.new_refusal,
               length(r.old_text) AS ol, length(r.new_text) AS nl
          FROM @extschema@.canary_shadow r
         WHERE r.canary = canary_shadow_by_class.canary AND r.ts >= cutoff
    ), per AS (
        -- per class, and overall: the grand total row, the only one whose
        -- cls is NULL (a row without a class is '(none)')
        SELECT w.cls, count(*) AS samples, count(*) FILTER (WHERE w.p) AS paired,
               count(*) FILTER (WHERE w.p AND w.verdict IN ('identical', 'equivalent'))::numeric
                   / nullif(count(*) FILTER (WHERE w.p), 0) AS agree,
               (count(*) FILTER (WHERE w.p AND w.new_refusal) - count(*) FILTER (WHERE w.p AND w.old_refusal))::numeric
                   / nullif(count(*) FILTER (WHERE w.p), 0) AS delta,
               avg(w.nl) FILTER (WHERE w.p) / nullif(avg(w.ol) FILTER (WHERE w.p), 0) AS ratio
          FROM w
         GROUP BY GROUPING SETS ((w.cls), ())
    ), judged AS (
        SELECT per.*, o.agree AS o_agree, o.delta AS o_delta,
               coalesce(per.agree < o.agree - 0.10, false) AS low_agree,
               coalesce(per.delta > o.delta + 0.05, false) AS more_refusals
          FROM per JOIN per o ON o.cls IS NULL
         WHERE per.cls IS NOT NULL
    )
    SELECT j.cls, j.samples, j.paired, round(j.agree, 4), round(j.delta, 4), round(j.ratio, 3),
           j.low_agree OR j.more_refusals,
           nullif(concat_ws('; ',
               CASE WHEN j.low_agree THEN
                   format('agreement %s is %s points below overall %s',
                          round(j.agree, 3), round(100 * (j.o_agree - j.agree), 1), round(j.o_agree, 3)) END,
               CASE WHEN j.more_refusals THEN
                   format('refusal delta %s exceeds overall %s by %s',
                          round(j.delta, 3), round(j.o_delta, 3), round(j.delta - j.o_delta, 3)) END), '')
      FROM judged j
     ORDER BY j.low_agree OR j.more_refusals DESC, j.samples DESC, j.cls;
END;
$$;
COMMENT ON FUNCTION canary_shadow_by_class(text, interval) IS
    'Shadow mode per prompt class: agreement, refusal delta and length ratio, flagging classes clearly worse than the rollout overall';

CREATE FUNCTION canary_shadow_stats()
RETURNS TABLE (queue_capacity integer, in_flight integer, dispatched bigint,
               dropped_queue_full bigint, dropped_no_worker bigint, dropped_memory bigint,
               rows_written bigint, rows_lost bigint, bytes_in_use bigint)
AS 'MODULE_PATHNAME', 'canary_shadow_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION canary_shadow_stats() IS
    'Counters of shadow mode since server start: jobs dispatched, dropped (queue full, no worker, memory), rows written and lost';

/*
 * Today's partitions of the three partitioned tables exist from the start.
 * They are data, not part of the extension: like the partitions the worker
 * creates later, they are dumped by pg_dump and dropped with their table.
 * So are the DEFAULT partitions' rows (config-dumped).
 */
SELECT count(*) FROM canary_maintenance();
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN
        SELECT d.objid::regclass
          FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
         WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e'
           AND d.refclassid = 'pg_extension'::regclass
           AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'llm_canary')
           AND c.relname ~ '^canary_(requests|feedback|shadow)_[0-9]{8}$'
    LOOP
        EXECUTE format('ALTER EXTENSION llm_canary DROP TABLE %s', part);
    END LOOP;
END;
$$;
SELECT pg_catalog.pg_extension_config_dump('canary_shadow_default', '');
