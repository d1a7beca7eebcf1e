/*-------------------------------------------------------------------------
 *
 * routing.c
 *	  Which model serves a user: canary_bucket, canary_route, canary_cohort.
 *
 * The bucket is the article's route_decision hash, bit for bit:
 *		int(sha256(salt || user_id).hexdigest()[:8], 16) % 10000 / 100
 * i.e. the first four digest bytes as a big-endian integer, modulo 10000,
 * giving 0.00 .. 99.99.  A user is in the new model's cohort when the bucket
 * is below percent_new, so raising the percentage only ever adds users.
 *
 * Without a session id routing only reads (the cached configuration), so it
 * works in read-only transactions and on a hot standby.  With a session id
 * the first decision is pinned in canary_sessions for the rollout's
 * session_ttl; a tripped kill switch always wins over a pin, and a pin never
 * sends anyone to the new model while the configuration sends no one there
 * (shadow, percent_new = 0): such a pin is re-decided.  Pins are read
 * and written as the extension's owner, so that the application role needs
 * no privileges on canary_sessions: a role that could write pins could put
 * a session on the new model in any stage.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/numeric.h"

#include "extension.h"
#include "fleet.h"
#include "routing.h"
#include "util.h"

/*
 * RoutingBucket
 *		Bucket 0 .. 9999 (the article's bucket times 100) of a user.
 */
uint32
RoutingBucket(const char *salt, int salt_len, const char *user_id, int user_len)
{
	uint8		digest[CANARY_SHA256_LEN];
	uint32		h;

	if (salt_len == 0)
		CanarySha256(user_id, user_len, digest);
	else
	{
		char		stackbuf[256];
		char	   *buf = stackbuf;
		int			total = salt_len + user_len;

		if (total > (int) sizeof(stackbuf))
			buf = palloc(total);
		memcpy(buf, salt, salt_len);
		memcpy(buf + salt_len, user_id, user_len);
		CanarySha256(buf, total, digest);
		if (buf != stackbuf)
			pfree(buf);
	}
	h = ((uint32) digest[0] << 24) | ((uint32) digest[1] << 16) |
		((uint32) digest[2] << 8) | (uint32) digest[3];
	return h % 10000;
}

/* NULL and empty user ids are caller bugs, not users. */
void
RoutingCheckUserId(text *user_id_arg, bool isnull)
{
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("user_id must not be NULL"),
				 errhint("Pass a stable id per user; for anonymous users or rotating ids pass a stable routing key.")));
	if (VARSIZE_ANY_EXHDR(user_id_arg) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user_id must not be empty"),
				 errhint("Pass a stable id per user; for anonymous users or rotating ids pass a stable routing key.")));
}

static void
RequireModels(const CanaryRollout *r, bool need_new)
{
	if (r->old_model == NULL || (need_new && r->new_model == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("rollout \"%s\" has no %s configured", r->name,
						r->old_model == NULL ? "old_model" : "new_model"),
				 errhint("Set both models, for example: UPDATE canary_config SET old_model = 'model-old', new_model = 'model-new' WHERE name = '%s';",
						 r->name)));
}

/*
 * Does the current configuration send anyone to the new model?  Not when
 * the kill switch is tripped, in shadow, or at percent_new = 0.  Neither the
 * hash nor a session pin may send a user there otherwise.
 */
static bool
RoutingSendsAnyoneNew(const CanaryRollout *r)
{
	return r->armed && r->stage != CANARY_STAGE_SHADOW && r->percent_x100 > 0 &&
		r->new_model != NULL;
}

/* The decision from the hash and the stage alone. */
static void
RouteByHash(const CanaryRollout *r, const char *user_id, int user_len,
			RouteDecision *d)
{
	d->pinned = false;
	d->canary = false;
	if (RoutingSendsAnyoneNew(r))
		d->canary = (int32) RoutingBucket(r->salt, r->salt_len, user_id, user_len)
			< r->percent_x100;
	d->model = d->canary ? r->new_model : r->old_model;
}

/*
 * Session pins.  Look up a live pin for (rollout, session); when there is
 * none, or it names a model the rollout no longer uses, or it names the new
 * model while the configuration sends no one there (the rollout went back to
 * shadow or to percent_new = 0), decide by hash and store the decision.
 * Runs through SPI, so the caller's transaction must be read-write.
 */
static void
RouteBySessionPinned(const CanaryRollout *r, const char *user_id, int user_len,
					 const char *session_id, RouteDecision *d)
{
	StringInfoData sql;
	Oid			types[6] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		args[6];
	const char *schema = ConfigSchemaName();
	MemoryContext caller = CurrentMemoryContext;
	char	   *pinned_model = NULL;
	int			ret;

	SPI_connect();
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT model FROM %s.canary_sessions"
					 " WHERE canary = $1 AND session_id = $2 AND expires_at > now()",
					 schema);
	args[0] = CStringGetTextDatum(r->name);
	args[1] = CStringGetTextDatum(session_id);
	ret = SPI_execute_with_args(sql.data, 2, types, args, NULL, true, 1);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read canary_sessions: SPI error %d", ret);
	if (SPI_processed == 1)
	{
		char	   *m = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (m != NULL &&
			((r->old_model && strcmp(m, r->old_model) == 0) ||
			 (RoutingSendsAnyoneNew(r) && strcmp(m, r->new_model) == 0)))
			pinned_model = MemoryContextStrdup(caller, m);
	}

	if (pinned_model != NULL)
	{
		d->pinned = true;
		d->canary = r->new_model != NULL && strcmp(pinned_model, r->new_model) == 0 &&
			(r->old_model == NULL || strcmp(pinned_model, r->old_model) != 0);
		d->model = pinned_model;
	}
	else
	{
		RouteByHash(r, user_id, user_len, d);
		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "INSERT INTO %s.canary_sessions AS s"
						 " (canary, session_id, user_id, model, cohort, expires_at)"
						 " VALUES ($1, $2, $3, $4, $5, now() + $6::interval)"
						 " ON CONFLICT (canary, session_id) DO UPDATE"
						 " SET user_id = EXCLUDED.user_id, model = EXCLUDED.model,"
						 " cohort = EXCLUDED.cohort, created_at = now(),"
						 " expires_at = EXCLUDED.expires_at",
						 schema);
		args[2] = PointerGetDatum(cstring_to_text_with_len(user_id, user_len));
		args[3] = CStringGetTextDatum(d->model);
		args[4] = CStringGetTextDatum(d->canary ? "canary" : "control");
		args[5] = CStringGetTextDatum(r->session_ttl);
		ret = SPI_execute_with_args(sql.data, 6, types, args, NULL, false, 0);
		if (ret != SPI_OK_INSERT)
			elog(ERROR, "could not write canary_sessions: SPI error %d", ret);
	}
	SPI_finish();
}

/*
 * RouteBySession
 *		RouteBySessionPinned as the extension's owner (CanaryBecomeOwner), so
 *		that the application role needs no privileges on canary_sessions.
 */
static void
RouteBySession(const CanaryRollout *r, const char *user_id, int user_len,
			   const char *session_id, RouteDecision *d)
{
	CanaryOwnerSave save;

	CanaryBecomeOwner(ConfigExtensionOwner(), &save);
	RouteBySessionPinned(r, user_id, user_len, session_id, d);
	CanaryRestoreUser(&save);

	/* the kill switch always wins over a pin */
	if (!r->armed)
	{
		d->canary = false;
		d->model = r->old_model;
	}
}

/*
 * RouteDecide
 *		Decide which model serves user_id in rollout r (session_id may be
 *		NULL).  decision->model points into r or into the caller's memory
 *		context.
 */
void
RouteDecide(const CanaryRollout *r, const char *user_id, int user_len,
			const char *session_id, RouteDecision *decision)
{
	RequireModels(r, r->stage != CANARY_STAGE_SHADOW);
	if (session_id != NULL)
		RouteBySession(r, user_id, user_len, session_id, decision);
	else
		RouteByHash(r, user_id, user_len, decision);
	FleetRouteOverride(r, decision);
}

/* Shared argument handling of canary_route and canary_cohort. */
static void
RouteFromArgs(FunctionCallInfo fcinfo, RouteDecision *d)
{
	text	   *user_id = PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0);
	char	   *canary;
	char	   *session_id = NULL;
	const CanaryRollout *r;

	RoutingCheckUserId(user_id, PG_ARGISNULL(0));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rollout name must not be NULL"),
				 errhint("Omit the argument to use the rollout named \"default\".")));
	canary = text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (PG_NARGS() > 2 && !PG_ARGISNULL(2))
	{
		session_id = text_to_cstring(PG_GETARG_TEXT_PP(2));
		if (session_id[0] == '\0')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("session_id must not be empty"),
					 errhint("Pass NULL to route without a session pin.")));
	}

	r = ConfigGetRollout(canary);
	RouteDecide(r, VARDATA_ANY(user_id), VARSIZE_ANY_EXHDR(user_id),
				session_id, d);
}

PG_FUNCTION_INFO_V1(canary_bucket);
Datum
canary_bucket(PG_FUNCTION_ARGS)
{
	text	   *user_id = PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0);
	text	   *salt;
	uint32		bucket;
	char		buf[16];

	RoutingCheckUserId(user_id, PG_ARGISNULL(0));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("salt must not be NULL"),
				 errhint("Use the empty string for the article's unsalted bucket.")));
	salt = PG_GETARG_TEXT_PP(1);
	bucket = RoutingBucket(VARDATA_ANY(salt), VARSIZE_ANY_EXHDR(salt),
						   VARDATA_ANY(user_id), VARSIZE_ANY_EXHDR(user_id));
	snprintf(buf, sizeof(buf), "%u.%02u", bucket / 100, bucket % 100);
	PG_RETURN_DATUM(DirectFunctionCall3(numeric_in, CStringGetDatum(buf),
										ObjectIdGetDatum(InvalidOid),
										Int32GetDatum(-1)));
}

PG_FUNCTION_INFO_V1(canary_route);
Datum
canary_route(PG_FUNCTION_ARGS)
{
	RouteDecision d;

	RouteFromArgs(fcinfo, &d);
	PG_RETURN_TEXT_P(cstring_to_text(d.model));
}

PG_FUNCTION_INFO_V1(canary_cohort);
Datum
canary_cohort(PG_FUNCTION_ARGS)
{
	RouteDecision d;

	RouteFromArgs(fcinfo, &d);
	PG_RETURN_TEXT_P(cstring_to_text(d.canary ? "canary" : "control"));
}
