/*
 * llm_canary upgrade from 1.0 to 1.1, generated from sql/updates/1.0--1.1/
 * by the Makefile.
 *
 * Each fragment carries one concern's changes, in the order they apply.
 * After ALTER EXTENSION llm_canary UPDATE, the catalog must be identical to
 * a fresh 1.1 install (test/t/001_upgrade.pl checks it) and no row is lost.
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION llm_canary UPDATE TO '1.1'" to load this file. \quit
