/*
 * 1.1, the false-trip budget (issue 13): significance defaults to 0.1 per
 * rollout-day, split by rule in src/sequential.c (the planner's
 * canary_sequential_samples takes the rule: 65_plan.sql).  Rollouts that
 * exist when the update runs keep the value they have (0.05 unless set).
 */
ALTER TABLE canary_config ALTER COLUMN significance SET DEFAULT 0.1;
