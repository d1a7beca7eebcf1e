/*-------------------------------------------------------------------------
 *
 * fleet.c
 *	  A fleet of application databases on PostgreSQL's logical replication.
 *
 * Roles (llm_canary.fleet_role): standalone (the default: one database is
 * its own rollout), control or member.
 *
 *	 - Configuration flows down.  The control database publishes
 *	   canary_models, canary_config, canary_refusal_patterns and
 *	   canary_fleet_heartbeat (publication llm_canary_config); every member
 *	   subscribes.  The apply worker runs with session_replication_role =
 *	   replica, so the tables' ordinary triggers do not fire for applied
 *	   rows: triggers ENABLEd REPLICA send the relcache invalidation that
 *	   the per-backend configuration cache listens to (config.c), so an
 *	   applied trip reaches every backend's next routing decision, and an
 *	   ordinary statement trigger refuses a member's own writes with an
 *	   error that names the control database.
 *	 - Evidence flows up.  Every member publishes its status row in
 *	   canary_fleet_members and its rollups, keyed by member (publication
 *	   llm_canary_evidence, no TRUNCATE); the control subscribes to every
 *	   member.  There a row trigger adds each applied change into the
 *	   fleet's combined rollups (sql/parts/33_fleet_combined.sql; a DELETE,
 *	   a member's retention, takes nothing out), and the checks read those
 *	   (FleetRollupsTable): one row per bucket and key, whatever the number
 *	   of members.  The CSAT check joins scores to users, so each member
 *	   also publishes canary_csat_user_days, the cohort that served each of
 *	   its users per rollout and day (sql/parts/51_csat.sql).
 *	 - Fail safe.  The control's worker writes canary_fleet_heartbeat every
 *	   llm_canary.fleet_heartbeat_interval.  On a member, a trigger ENABLEd
 *	   REPLICA on that table stamps the row with the member's own clock and,
 *	   when the apply transaction commits, stores that time in shared
 *	   memory.  Routing compares it with the member's clock (one atomic
 *	   read, no clock skew between servers involved): after
 *	   llm_canary.fleet_max_lag without a heartbeat, every user is routed
 *	   to the old model and no shadow call goes to the new one.  The
 *	   member's worker logs each change of that state and reports it up in
 *	   canary_fleet_members; canary_prometheus and canary_fleet() show it.
 *
 * Everything here needs shared_preload_libraries: without it the settings
 * are not defined and the database is standalone.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "config.h"
#include "extension.h"
#include "fleet.h"

/* settings */
static int	fleet_role = CANARY_FLEET_STANDALONE;
static char *fleet_member = NULL;
static int	fleet_max_lag_ms = 30000;
static int	fleet_heartbeat_interval_ms = 1000;

static const struct config_enum_entry fleet_role_options[] = {
	{"standalone", CANARY_FLEET_STANDALONE, false},
	{"control", CANARY_FLEET_CONTROL, false},
	{"member", CANARY_FLEET_MEMBER, false},
	{NULL, 0, false}
};

/*
 * Shared state.  heard_at is the member's clock at the commit of the last
 * applied heartbeat (0: not heard since the server started and not loaded
 * from the table yet).  fail_safe is the worker's view, for the log and the
 * reports; routing decides from heard_at itself.
 */
typedef struct FleetSharedState
{
	pg_atomic_uint64 heard_at;
	pg_atomic_uint32 heard_loaded;	/* 1: heard_at was loaded from the table */
	pg_atomic_uint32 fail_safe;
	pg_atomic_uint64 fail_safe_routes;	/* decisions turned to the old model */
} FleetSharedState;

static FleetSharedState *FleetShared = NULL;

/* apply worker: a heartbeat applied in the open transaction */
static bool HeardPending = false;
static bool HeardCallbackRegistered = false;

static const char *
FleetRoleName(void)
{
	return fleet_role_options[fleet_role].name;
}

/* The member's name: llm_canary.member, or "" when not set. */
static const char *
FleetMemberName(void)
{
	return fleet_member != NULL ? fleet_member : "";
}

/*
 * FleetInit
 *		Define the fleet's settings; from _PG_init.  Only while preloading:
 *		without shared memory a database is standalone.
 */
void
FleetInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomEnumVariable("llm_canary.fleet_role",
							 "Sets this database's role in a fleet: standalone, control or member.",
							 "A control database runs the kill switch for the whole fleet and publishes the configuration; a member subscribes to it, publishes its evidence and refuses configuration changes of its own.",
							 &fleet_role,
							 CANARY_FLEET_STANDALONE, fleet_role_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("llm_canary.member",
							   "Sets the name of this database in the fleet.",
							   "Rows this database contributes to the fleet's evidence carry this name; it must be unique in the fleet.",
							   &fleet_member,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("llm_canary.fleet_max_lag",
							"Sets how long a fleet member may go without hearing from the control database before it routes every user to the old model.",
							"0 switches the fail-safe off.",
							&fleet_max_lag_ms,
							30000, 0, 86400000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("llm_canary.fleet_heartbeat_interval",
							"Sets how often the control database's worker writes the fleet heartbeat, and a member's worker reports its state.",
							NULL,
							&fleet_heartbeat_interval_ms,
							1000, 100, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

void
FleetRequestShmem(void)
{
	RequestAddinShmemSpace(MAXALIGN(sizeof(FleetSharedState)));
}

/* Create or find the shared state; from the shmem_startup_hook. */
void
FleetInitShmem(void)
{
	bool		found;
	bool		take_lock = !LWLockHeldByMe(AddinShmemInitLock);

	if (take_lock)
		LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	FleetShared = ShmemInitStruct("llm_canary fleet", sizeof(FleetSharedState), &found);
	if (!found)
	{
		pg_atomic_init_u64(&FleetShared->heard_at, 0);
		pg_atomic_init_u32(&FleetShared->heard_loaded, 0);
		pg_atomic_init_u32(&FleetShared->fail_safe, 0);
		pg_atomic_init_u64(&FleetShared->fail_safe_routes, 0);
	}
	if (take_lock)
		LWLockRelease(AddinShmemInitLock);
}

/* Move heard_at forward to t (never back). */
static void
FleetStoreHeard(TimestampTz t)
{
	uint64		cur = pg_atomic_read_u64(&FleetShared->heard_at);

	while ((int64) cur < (int64) t)
	{
		if (pg_atomic_compare_exchange_u64(&FleetShared->heard_at, &cur, (uint64) t))
			break;
	}
}

/*
 * FleetLoadHeard
 *		After a restart, take heard_at from the heartbeat row (stamped with
 *		this server's clock when it was applied), so that a quick restart
 *		does not fail safe while a long outage does.  The worker's first
 *		fleet step calls it, in its transaction; does nothing when the table
 *		is missing (an older version of the extension).
 */
static void
FleetLoadHeard(void)
{
	Oid			extoid = get_extension_oid(LLM_CANARY_EXTNAME, true);
	Oid			nspoid;
	char	   *sql;

	if (!OidIsValid(extoid))
		return;
	nspoid = CanaryExtensionNamespace(extoid);
	if (!OidIsValid(get_relname_relid("canary_fleet_heartbeat", nspoid)))
		return;

	sql = psprintf("SELECT max(received_at) FROM %s.canary_fleet_heartbeat",
				   quote_identifier(get_namespace_name(nspoid)));
	SPI_connect();
	if (SPI_execute(sql, true, 1) == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
			FleetStoreHeard(DatumGetTimestampTz(d));
	}
	SPI_finish();
	pg_atomic_write_u32(&FleetShared->heard_loaded, 1);
}

/* When this member last heard from the control database (0: never). */
static TimestampTz
FleetHeardAt(void)
{
	return (TimestampTz) pg_atomic_read_u64(&FleetShared->heard_at);
}

/*
 * FleetLagMs
 *		Milliseconds since this member last heard from the control database;
 *		-1 when it never did.
 */
static int64
FleetLagMs(void)
{
	TimestampTz heard = FleetHeardAt();

	if (heard == 0)
		return -1;
	return Max(0, (GetCurrentTimestamp() - heard) / 1000);
}

/*
 * FleetFailSafeActive
 *		Is this member cut off from the control database for too long?
 *		Until the worker has loaded heard_at after a start (its first step,
 *		within a heartbeat interval), the answer is no: routing itself never
 *		reads tables for the fail-safe.  While it is, no user is routed to
 *		the new model (FleetRouteOverride) and no shadow call goes to it
 *		(call.c does not queue one, shadow_worker.c does not start one
 *		queued before).  One atomic read and a clock read.
 */
bool
FleetFailSafeActive(void)
{
	int64		lag;

	if (fleet_role != CANARY_FLEET_MEMBER || fleet_max_lag_ms <= 0 || FleetShared == NULL ||
		pg_atomic_read_u32(&FleetShared->heard_loaded) == 0)
		return false;
	lag = FleetLagMs();
	return lag < 0 || lag > fleet_max_lag_ms;
}

/*
 * FleetRouteOverride
 *		The fail-safe: on a member that has not heard from the control
 *		database for llm_canary.fleet_max_lag, the old model serves everyone
 *		(as if the kill switch had tripped).  Called after every routing
 *		decision; costs one atomic read and a clock read.
 */
void
FleetRouteOverride(const CanaryRollout *r, RouteDecision *d)
{
	if (!d->canary || r->old_model == NULL || !FleetFailSafeActive())
		return;
	d->canary = false;
	d->model = r->old_model;
	pg_atomic_fetch_add_u64(&FleetShared->fail_safe_routes, 1);
}

/* A member routes and calls; the control (or a standalone database) judges. */
bool
FleetJudgesRollouts(void)
{
	return fleet_role != CANARY_FLEET_MEMBER;
}

void
FleetRequireJudge(const char *what)
{
	if (!FleetJudgesRollouts())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s runs on the fleet's control database, not on member \"%s\"",
						what, FleetMemberName()),
				 errdetail("The control database judges the rollout on the whole fleet's evidence."),
				 errhint("Run it on the control database, or set llm_canary.fleet_role to standalone to leave the fleet.")));
}

/*
 * The rollups this database judges by: on the control, the fleet's combined
 * rows (canary_fleet_rollups, maintained as the members' rows are applied:
 * sql/parts/33_fleet_combined.sql); everywhere else canary_rollups.  The
 * view canary_rollup_source makes the same choice for SQL.
 */
const char *
FleetRollupsTable(void)
{
	return fleet_role == CANARY_FLEET_CONTROL ? "canary_fleet_rollups" : "canary_rollups";
}

/*
 * canary_fleet_is_control(): whether this database is the fleet's control
 * (false without shared_preload_libraries, like every fleet setting).
 */
PG_FUNCTION_INFO_V1(canary_fleet_is_control);
Datum
canary_fleet_is_control(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(fleet_role == CANARY_FLEET_CONTROL);
}

/* How often the worker runs FleetWorkerStep; 0: not in a fleet. */
long
FleetWorkerIntervalMs(void)
{
	return fleet_role == CANARY_FLEET_STANDALONE ? 0 : fleet_heartbeat_interval_ms;
}

/* Log when the fail-safe engages and when it lets go. */
static void
FleetLogTransition(bool active, int64 lag)
{
	uint32		was = pg_atomic_exchange_u32(&FleetShared->fail_safe, active ? 1 : 0);

	if (active && !was)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_canary fleet member \"%s\" is failing safe: every user is routed to the old model",
						FleetMemberName()),
				 lag < 0 ?
				 errdetail("The member has not heard from the control database since it started; llm_canary.fleet_max_lag is %d ms.",
						   fleet_max_lag_ms) :
				 errdetail("The member last heard from the control database %lld ms ago; llm_canary.fleet_max_lag is %d ms.",
						   (long long) lag, fleet_max_lag_ms),
				 errhint("Check the subscription llm_canary_config (pg_stat_subscription) and the control database's worker.")));
	else if (!active && was)
		ereport(LOG,
				(errmsg("llm_canary fleet member \"%s\" hears from the control database again: routing follows the rollouts",
						FleetMemberName())));
}

/*
 * FleetWorkerStep
 *		One fleet step of the worker, in its transaction with SPI connected:
 *		the control writes the heartbeat; a member logs a change of its
 *		fail-safe state and reports its state in canary_fleet_members (which
 *		it publishes to the control).
 */
void
FleetWorkerStep(const char *schema)
{
	Oid			types[4] = {TEXTOID, TIMESTAMPTZOID, BOOLOID, INT8OID};
	Datum		args[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	int			ret;

	if (fleet_role == CANARY_FLEET_CONTROL)
	{
		args[0] = CStringGetTextDatum(FleetMemberName());
		ret = SPI_execute_with_args(psprintf("SELECT %s.canary_fleet_beat($1)", schema),
									1, types, args, NULL, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not write the fleet heartbeat: SPI error %d", ret);
	}
	else if (fleet_role == CANARY_FLEET_MEMBER)
	{
		TimestampTz heard;
		bool		active;

		if (pg_atomic_read_u32(&FleetShared->heard_loaded) == 0)
			FleetLoadHeard();
		heard = FleetHeardAt();
		active = FleetFailSafeActive();

		FleetLogTransition(active, FleetLagMs());
		if (FleetMemberName()[0] == '\0')
			return;				/* canary_fleet_publish() says what to set */
		args[0] = CStringGetTextDatum(FleetMemberName());
		args[1] = TimestampTzGetDatum(heard);
		nulls[1] = heard == 0 ? 'n' : ' ';
		args[2] = BoolGetDatum(active);
		args[3] = Int64GetDatum((int64) pg_atomic_read_u64(&FleetShared->fail_safe_routes));
		ret = SPI_execute_with_args(psprintf("SELECT %s.canary_fleet_report($1, $2, $3, $4)", schema),
									4, types, args, nulls, false, 0);
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "could not report the fleet member's state: SPI error %d", ret);
	}
}

/* Apply worker: publish a committed heartbeat to shared memory. */
static void
FleetHeardXactCallback(XactEvent event, void *arg)
{
	if (!HeardPending)
		return;
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
	{
		FleetStoreHeard(GetCurrentTimestamp());
		pg_atomic_write_u32(&FleetShared->heard_loaded, 1);
		HeardPending = false;
	}
	else if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		HeardPending = false;
}

/*
 * canary_fleet_heard
 *		BEFORE INSERT OR UPDATE row trigger on canary_fleet_heartbeat,
 *		ENABLEd REPLICA: fires only for rows the logical replication apply
 *		worker writes, i.e. on a member hearing from the control database.
 *		Stamps received_at with this server's clock, and makes the commit
 *		of the apply transaction move the shared heard_at forward.
 */
PG_FUNCTION_INFO_V1(canary_fleet_heard);
Datum
canary_fleet_heard(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	int			attnum;
	Datum		value;
	bool		isnull = false;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("canary_fleet_heard() must be called as a BEFORE INSERT OR UPDATE row trigger")));

	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ?
		trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);
	attnum = SPI_fnumber(desc, "received_at");
	if (attnum <= 0)
		elog(ERROR, "canary_fleet_heartbeat has no column received_at");

	value = TimestampTzGetDatum(GetCurrentTimestamp());
	tuple = heap_modify_tuple_by_cols(tuple, desc, 1, &attnum, &value, &isnull);

	if (FleetShared != NULL)
	{
		if (!HeardCallbackRegistered)
		{
			RegisterXactCallback(FleetHeardXactCallback, NULL);
			HeardCallbackRegistered = true;
		}
		HeardPending = true;
	}
	return PointerGetDatum(tuple);
}

/*
 * canary_fleet_local()
 *		This database's own view: role, member name, when it last heard from
 *		the control database, the lag, the fail-safe and how many routing
 *		decisions it turned to the old model since the server started.
 */
PG_FUNCTION_INFO_V1(canary_fleet_local);
Datum
canary_fleet_local(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7];
	TimestampTz heard = 0;
	int64		lag = -1;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);
	memset(nulls, 0, sizeof(nulls));

	if (FleetShared != NULL && fleet_role == CANARY_FLEET_MEMBER)
	{
		heard = FleetHeardAt();
		lag = FleetLagMs();
	}
	values[0] = CStringGetTextDatum(FleetShared != NULL ? FleetRoleName() : "standalone");
	values[1] = CStringGetTextDatum(FleetMemberName());
	values[2] = TimestampTzGetDatum(heard);
	nulls[2] = heard == 0;
	values[3] = Int64GetDatum(lag);
	nulls[3] = lag < 0;
	values[4] = BoolGetDatum(FleetFailSafeActive());
	values[5] = Int64GetDatum(FleetShared != NULL ?
							  (int64) pg_atomic_read_u64(&FleetShared->fail_safe_routes) : 0);
	values[6] = Int32GetDatum(fleet_max_lag_ms);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
