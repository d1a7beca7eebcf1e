/*
 * llm_canary install script, generated from sql/parts/ by the Makefile.
 *
 * Parts, in order: configuration (models, rollouts, history), routing,
 * the probe, metrics (and partition maintenance), shadow mode, the call
 * path, the response cache, the reports, Prometheus and the timeline, the
 * kill switch (alerts, scheduling), the CSAT signal, decisions, plans, the
 * fleet, and roles.  Each part creates what it owns; test/sql/ has a
 * pg_regress file of the same name for each (00_install for this header).
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION llm_canary" to load this file. \quit
