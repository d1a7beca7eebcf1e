-- canary_bucket is the article's route_decision bucket, bit for bit:
\set SHOW_CONTEXT never
--   int(sha256(salt || user_id).hexdigest()[:8], 16) % 10000 / 100
-- The expected values were computed with Python's hashlib from that formula.
SELECT v.user_id, v.salt, canary_bucket(v.user_id, v.salt) AS bucket, v.expected,
       canary_bucket(v.user_id, v.salt) = v.expected AS matches
  FROM (VALUES
        ('u_91442', '', 10.60), ('u_1', '', 89.50), ('alice', '', 78.01),
        ('bob', '', 27.12), ('Zoë', '', 99.44), ('用户42', '', 72.51),
        ('🙂emoji', '', 52.87), (' space ', '', 43.75),
        ('u_91442', 'rollout-b', 24.13), ('alice', 'rollout-b', 10.36),
        ('Zoë', 'rollout-b', 37.00), ('用户42', 'rollout-b', 65.42)
       ) AS v(user_id, salt, expected);

-- the default salt is the empty string
SELECT canary_bucket('u_91442') = canary_bucket('u_91442', '') AS same;

-- always two decimals, in [0, 100)
SELECT min(b) >= 0 AS non_negative, max(b) < 100 AS below_100,
       bool_and(b = round(b, 2)) AS two_decimals
  FROM (SELECT canary_bucket('u_' || g) AS b FROM generate_series(1, 10000) g) s;

-- bad input
SELECT canary_bucket(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT canary_bucket('');
\echo :LAST_ERROR_SQLSTATE
SELECT canary_bucket('u_1', NULL);
\echo :LAST_ERROR_SQLSTATE
