/*
 * llm_canary install script, generated from sql/parts/ by the Makefile.
 *
 * Parts, in order: configuration (models, rollouts, history), routing,
 * the call path and its metrics, shadow mode, the monitor (kill switch,
 * alerts, CSAT) and scheduling.  Each part creates what it owns.
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION llm_canary" to load this file. \quit
